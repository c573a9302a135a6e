"""The long-context stage end to end through the local runner: 2 ranks, one sequence split across
both, under DDP and under FSDP2 (the needle then runs on the gathered model)."""

import json
from pathlib import Path

import pytest
from stage_runs import stage_output
from transformers import AutoConfig, AutoModelForCausalLM

from zhinao.tokenizer import load as load_tokenizer
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.runner.pipeline import run_training_pipeline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_sequence_parallel_train_export_rope_5e7_and_needle_report(
    tmp_path, stage_assets, longctx_base_model, make_longctx_spec, engine
):
    spec = make_longctx_spec(
        "long", f"file://{tmp_path}/store", longctx_base_model, stage_assets["corpus"], engine=engine
    )
    pipeline = parse_pipeline(spec)
    result = run_training_pipeline(pipeline, workdir=tmp_path / "w")
    job = result.stages[0][1]
    log = (job.log_dir / "master-0.log").read_text()
    assert result.succeeded, log[-3000:]
    assert "rope base 10000 -> 5e+07" in log and "sequence parallel 2 x data parallel 1" in log
    assert f"engine {engine}," in log

    out = stage_output(pipeline, "longctx")
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["steps"] == 6 and summary["sequence_parallel"] == 2 and summary["data_parallel"] == 1
    assert summary["tokens"] == 6 * 2 * 256  # one group: 2 sequences of 256 tokens per step
    assert summary["synthetic_sequences"] > 0
    assert summary["loss_last"] < summary["loss_first"]

    hf_dir = summary["hf"].removeprefix("file://")
    raw = json.loads(Path(hf_dir, "config.json").read_text())
    assert raw["rope_parameters"]["rope_theta"] == 5e7 and raw["max_position_embeddings"] == 256
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert model.config._attn_implementation != "zhinao_ring"
    assert AutoConfig.from_pretrained(hf_dir).rope_parameters["rope_theta"] == 5e7
    assert load_tokenizer(hf_dir).convert_tokens_to_ids("<|im_end|>") is not None

    needle = json.loads(out.get_bytes("report/needle.json"))
    assert needle["lengths"] == [160, 256] and needle["depths"] == [0.0, 50.0, 100.0]
    assert needle["sequence_parallel"] == 2 and needle["precision"] == "bf16"  # across both ranks, in bf16
    assert len(needle["cells"]) == 6 and all(0 <= c["score"] <= 100 for c in needle["cells"])
    assert all(c["prompt_tokens"] == c["length"] for c in needle["cells"])
    assert out.get_bytes("report/needle.png")[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(l) for l in out.get_bytes("sft/long-qa.jsonl").decode().splitlines()]
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"multi_doc_qa", "single_doc_qa"}
    manifest = json.loads(out.get_bytes("checkpoints/step-00000006/manifest.json"))
    # DDP: rank 0's full copy; FSDP2: every rank's DCP shard file.
    full_copy = "model.pt" in manifest["parts"]
    assert full_copy if engine == "ddp" else sum(p.endswith(".distcp") for p in manifest["parts"]) == 2
