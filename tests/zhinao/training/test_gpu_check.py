"""`make gpu-check`'s CPU dry run: the same script end to end with the tiny model, and its stage-kind check."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import load_script

from zhinao.config.kinds import KIND_NAMES
from zhinao_k8s.runner.local import JobResult

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # every stage kind runs as a local PyTorchJob (a minute or more of CPU)
def test_dry_run_trains_reports_throughput_mfu_and_memory_and_steps_every_stage_kind(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["steps"] == 3
    assert result["loss_last"] < result["loss_first"]
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["peak_memory_gb"] > 0
    long = result["long_context"]  # the 32K line, at 64 tokens on CPU
    assert long["seq_len"] == 64 and long["tokens_per_second"] > 0 and "MPT-1B" in long["anchor"]
    remax = result["remax"]  # on CPU: the tiny model, the hf engine only (vLLM needs a GPU)
    assert remax["model"] == "tiny" and list(remax["engines"]) == ["hf"]
    hf = remax["engines"]["hf"]
    assert hf["timed_steps"] == 1 and hf["samples_per_second"] > 0 and 0 < hf["generation_share"] < 1
    # One bf16 step of every stage kind, each reported on its own line.
    assert result["stages"] == dict.fromkeys(KIND_NAMES, "ok")
    assert all(f"stage {kind}: ok" in done.stdout.splitlines() for kind in KIND_NAMES)


def test_the_stage_check_covers_every_kind_in_bf16_and_names_the_one_that_failed():
    steps = load_script("bench/stage_steps.py")
    uris = dict.fromkeys(("sft", "preferences", "prompts", "evalPrompts"), "file:///data")
    pipeline = steps.every_kind("file:///store", uris)
    assert [s.kind for s in pipeline.spec.stages] == list(KIND_NAMES)
    trained = [s for s in pipeline.spec.stages if s.kind not in ("data", "tokenizer")]
    assert all(s.params.precision == "bf16" and s.params.max_steps == 1 for s in trained)
    rlhf = pipeline.stage("rlhf").params
    assert rlhf.rollout_precision == rlhf.reference_precision == "bf16"

    ran = [
        ("data", JobResult("gpu-check-data", succeeded=True)),
        ("tokenizer", JobResult("gpu-check-tokenizer", succeeded=True)),
        ("pretrain", JobResult("gpu-check-pretrain", reason="master-0 exited with code 1: rank 0: RuntimeError: boom")),
    ]
    said, ok = steps.verdicts(pipeline, ran)
    assert not ok and list(said) == list(KIND_NAMES)
    assert said["tokenizer"] == "ok"
    assert said["pretrain"] == "failed: master-0 exited with code 1: rank 0: RuntimeError: boom"
    assert said["rlhf"] == "not run: pretrain failed first"


def test_without_a_gpu_the_real_check_says_so():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode != 0 and "no CUDA device" in done.stderr
