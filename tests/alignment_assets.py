"""Tiny real assets for the alignment tests: a BPE tokenizer and an untrained tiny 360Zhinao model
exported as a stage output (`<prefix>/hf/`), so SFT/RM/RLHF tests need no pretraining run."""

import json
from pathlib import Path

from zhinao.model import build_config, build_model
from zhinao.synthetic import all_pairs, question
from zhinao.tokenizer import to_transformers, train_bpe

TEXTS = [
    "You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog.",
    "user assistant system",
    "Translate the sentence into English.",
    "Call the weather function.",
    "你好，世界。今天天气很好。",
    "def add(a, b): return a + b",
    "The answer is 42.",
] + [f"{question(a, b)}{a + b}" for a, b in all_pairs()]


def tiny_tokenizer(dest: Path):
    tok = to_transformers(train_bpe(TEXTS * 3, vocab_size=400, min_frequency=1))
    tok.save_pretrained(dest)
    return tok


def tiny_policy(root: Path, *, seed: int = 0) -> str:
    """file:// URI of a prefix holding hf/ with a tiny random model and its tokenizer."""
    hf = root / "hf"
    tok = tiny_tokenizer(hf)
    config = build_config("tiny", vocab_size=len(tok), max_position_embeddings=512, attention="sdpa")
    config.pad_token_id = tok.pad_token_id
    build_model(config, seed=seed).save_pretrained(hf, safe_serialization=True)
    return f"file://{root}"


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return f"file://{path}"


def run_stage(kind: str, inputs: dict, output: str, **params):
    """Run one stage in this process (world size 1), as `python -m zhinao` would."""
    from zhinao.config.runtime import StageRuntime
    from zhinao.stages import run_stage as dispatch

    dispatch(StageRuntime(pipeline="t", stage=kind, kind=kind, inputs=inputs, output=output, params=params))


class Crash(RuntimeError):
    pass


def crash_on_step(monkeypatch, n: int) -> None:
    """Make the n-th optimizer step of DDPEngine raise (a killed process, in-process)."""
    from zhinao.training.engine import DDPEngine

    real = DDPEngine.train_step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"crash at step {n}")
        return real(self, *a, **k)

    monkeypatch.setattr(DDPEngine, "train_step", step)


def hf_weights(uri: str) -> dict:
    """The exported weights of a file:// stage output (of what it published, if it did)."""
    from zhinao.artifacts import published_store
    from zhinao.storage import open_store
    from zhinao.training.hf_export import read_export

    return read_export(Path(published_store(open_store(uri)).uri.removeprefix("file://")) / "hf")


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
