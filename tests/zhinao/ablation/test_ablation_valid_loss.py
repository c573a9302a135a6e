"""The validation loss the pretrain stage records in its loop equals the post-hoc one it replaced.

Before, the ablation kept every checkpoint and scored each afterwards: the Hugging Face model with
the checkpoint's weights, full logits in float32, summed cross-entropy over every next token. Now
the stage scores the same held-out sequences in its loop every `evalEvery` steps. One tiny run that
does both (it keeps its checkpoints here) must give the same curve.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from alignment_assets import run_stage  # tests/ is on sys.path (rootdir conftest)

from zhinao.ablation.evaluate import evaluate_run, load_run_model
from zhinao.artifacts import StageOutput
from zhinao.corpus import corpus_keys, jsonl_lines
from zhinao.data.packing import pack_source
from zhinao.storage import open_store
from zhinao.tokenizer import EOD
from zhinao.tokenizer import load as load_tokenizer

SEQ_LEN = 64


def write_valid(assets: dict, dest: Path, n: int = 12) -> str:
    """n packed sequences of the corpus' last documents (held out of nothing: only the numbers matter)."""
    tok = load_tokenizer(Path(assets["tokenizer"].removeprefix("file://")))
    store = open_store(assets["corpus"])
    texts = [json.loads(line)["text"] for _, _, line in jsonl_lines(store, corpus_keys(store))][-60:]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    seqs = pack_source(ids, seq_len=SEQ_LEN, eod_id=tok.convert_tokens_to_ids(EOD))[:n]
    assert len(seqs) == n
    dest.mkdir(parents=True)
    np.save(dest / "tokens.npy", seqs)
    return f"file://{dest}"


@torch.no_grad()
def post_hoc(model, tokens: np.ndarray) -> float:
    """The evaluation as it was: full logits in float32, summed cross-entropy / next tokens, batches of 16."""
    total, count = 0.0, 0
    for i in range(0, len(tokens), 16):
        ids = torch.from_numpy(tokens[i : i + 16].astype(np.int64))
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    return total / count


def test_the_loop_records_the_validation_loss_the_checkpoints_gave(stage_assets, tmp_path: Path) -> None:
    valid = write_valid(stage_assets, tmp_path / "valid")
    out = f"file://{tmp_path / 'run'}"
    inputs = {"tokenizer": stage_assets["tokenizer"], "corpus": stage_assets["corpus"], "valid": valid}
    run_stage(
        "pretrain",
        inputs,
        out,
        seqLen=SEQ_LEN,
        microBatchSize=4,
        maxSteps=12,
        warmupSteps=2,
        checkpointEvery=5,
        evalEvery=5,
        keepCheckpoints=10,  # kept here only to score them the old way
    )
    now = evaluate_run(out, valid=True, items=[], workdir=tmp_path / "eval")
    assert [p["step"] for p in now["valid_curve"]] == [5, 10, 12]  # every 5 steps and after the last

    run = StageOutput.at(out)
    checkpoints = run.checkpoints()
    assert checkpoints.committed_steps() == [5, 10, 12]
    model, _ = load_run_model(open_store(out), tmp_path / "hf")
    tokens = np.load(tmp_path / "valid" / "tokens.npy")
    before = []
    for step in checkpoints.committed_steps():
        part = checkpoints.get_part(step, "model.pt", tmp_path / f"model-{step}.pt")
        model.load_state_dict(torch.load(part, map_location="cpu"))
        before.append(post_hoc(model, tokens))
    # Same weights, same tokens; the loop's loss path reduces in another order (float32 rounding).
    assert [p["valid_loss"] for p in now["valid_curve"]] == pytest.approx(before, rel=1e-5)
    assert now["valid_loss"] == now["valid_curve"][-1]["valid_loss"]
    assert before[0] > before[-1]  # it trained: the curve is not a constant


def test_a_valid_input_of_another_sequence_length_is_one_line(stage_assets, tmp_path: Path) -> None:
    valid = tmp_path / "valid"
    valid.mkdir()
    np.save(valid / "tokens.npy", np.zeros((4, 32), dtype=np.int32))
    inputs = {"tokenizer": stage_assets["tokenizer"], "corpus": stage_assets["corpus"], "valid": f"file://{valid}"}
    with pytest.raises(SystemExit) as exc:
        run_stage("pretrain", inputs, f"file://{tmp_path / 'run'}", seqLen=SEQ_LEN, maxSteps=4, warmupSteps=1)
    assert str(exc.value) == f"inputs.valid: file://{valid}/tokens.npy holds shape (4, 32), not (n, {SEQ_LEN})"
