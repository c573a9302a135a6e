"""zhinao.artifacts: a stage output's layout, read and written through StageOutput only."""

import ast
import json
from pathlib import Path

import pytest

from zhinao.artifacts import StageOutput, metrics_key
from zhinao.data.token_shards import Shard, TokenIndex
from zhinao.storage import FileStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def output(tmp_path) -> StageOutput:
    return StageOutput(FileStore(tmp_path / "out"))


def test_summary_marks_the_stage_finished(output):
    assert not output.is_finished()
    output.write_summary({"loss_last": 1.5})
    assert output.is_finished()
    assert output.read_summary() == {"loss_last": 1.5}


def test_step_records_skip_events_and_blank_lines(output, tmp_path):
    log = tmp_path / "rank-1.jsonl"
    log.write_text(
        json.dumps({"step": 1, "loss": 2.0})
        + "\n\n"
        + json.dumps({"event": "checkpoint", "step": 1})
        + "\n"
        + json.dumps({"event": "step", "step": 2, "loss": 1.0})
        + "\n"
    )
    assert output.metrics_lines(1) == []
    output.put_metrics(1, log)
    assert (Path(output.uri[len("file://") :]) / metrics_key(1)).is_file()
    assert [r["step"] for r in output.metrics_records(1)] == [1, 1, 2]
    assert [r["loss"] for r in output.step_records(1)] == [2.0, 1.0]
    assert not output.has_metrics(0)


def _save_pretrained_like(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text(name)
    return folder


def test_hf_export_roundtrip_splits_the_tokenizer_files(output, tmp_path):
    url = output.put_hf(_save_pretrained_like(tmp_path / "saved"))
    assert url == output.hf_url and url.endswith("/hf")
    export = output.fetch_hf(tmp_path / "fetched")
    assert sorted(p.name for p in export.model_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(p.name for p in export.tokenizer_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_a_bare_model_prefix_is_an_export_too(tmp_path):
    bare = FileStore(tmp_path / "bare")
    for path in _save_pretrained_like(tmp_path / "saved").iterdir():
        bare.put_file(path.name, path)
    export = StageOutput(bare).fetch_hf(tmp_path / "fetched")
    assert (export.model_dir / "model.safetensors").read_text() == "model.safetensors"


def test_no_export_is_a_named_error(output, tmp_path):
    with pytest.raises(SystemExit, match=r"holds no Hugging Face export \(expected hf/config.json\)"):
        output.fetch_hf(tmp_path / "x")


def test_tokenizer_and_tokens_and_report(output, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    assert not output.has_tokenizer()
    output.put_tokenizer(tok)
    assert output.has_tokenizer()
    assert (output.fetch_tokenizer(tmp_path / "back") / "tokenizer.json").read_text() == "{}"
    assert not output.has_tokens()
    index = TokenIndex(
        seq_len=8, vocab_size=9, shards=[Shard(output.put_token_shard("a-r00000-00000", b"\0" * 32), "a", 1)]
    )
    output.write_tokens_index(index)
    assert output.has_tokens() and output.read_tokens_index() == index
    assert index.shards[0].key == "tokens/a-r00000-00000.bin"
    output.put_tokens_part(3, index)
    assert output.read_tokens_part(3) == index
    url = output.put_report("loss.png", b"png")
    assert url == output.report_url("loss.png") and output.report_keys() == ["report/loss.png"]


# ---- one owner: no other module spells the layout ------------------------------------------------

LAYOUT_HEADS = {"hf", "checkpoints", "metrics", "report", "tokenizer", "tokens"}
LAYOUT_FILES = ("summary.json", "metrics/rank-", "tokens/index.json")
STORE_METHODS = {"url", "list", "exists", "child", "get_bytes", "put_bytes", "get_file", "put_file", "delete"}
OWNER = ROOT / "zhinao" / "artifacts.py"


def _head(node: ast.expr) -> str | None:
    """The leading literal text of a string or f-string argument."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def layout_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if any(f in node.value for f in LAYOUT_FILES) and "\n" not in node.value and " " not in node.value:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STORE_METHODS:
            head = _head(node.args[0]) if node.args else None
            if head is not None and head.split("/")[0] in LAYOUT_HEADS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.attr}({head!r}...)")
        if isinstance(node, ast.keyword) and node.arg == "prefix" and _head(node.value) in LAYOUT_HEADS:
            found.append(f"{path.relative_to(ROOT)}:{node.value.lineno}: prefix={_head(node.value)!r}")
    return found


def test_only_artifacts_spells_the_stage_output_layout():
    files = [
        p
        for top in ("zhinao", "operator/zhinao_k8s", "bench")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p not in (OWNER, ROOT / "zhinao" / "checkpoint.py")  # checkpoint.py: what lies inside checkpoints/
    ]
    assert len(files) > 50
    assert layout_literals(OWNER), "the detector must see the owner's own literals"
    found = [hit for p in files for hit in layout_literals(p)]
    assert not found, "stage-output layout outside zhinao/artifacts.py:\n" + "\n".join(found)
