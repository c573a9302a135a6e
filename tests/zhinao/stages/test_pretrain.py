"""The pretrain stage end to end, through the local PyTorchJob runner, with real processes."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from zhinao.storage import open_store
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.runner.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def run(spec: str, workdir: Path, listener=None, secrets=None):
    pipeline = parse_pipeline(spec)
    result = run_pipeline(pipeline, workdir=workdir, listener=listener, secrets=secrets)
    return pipeline, result


def weights(uri: str) -> dict[str, torch.Tensor]:
    return load_file(uri.removeprefix("file://") + "/hf/model.safetensors")


def test_sigkill_of_a_rank_resumes_from_checkpoint_with_identical_final_weights(tmp_path, stage_assets, make_pretrain_spec):
    ref_pipeline, ref = run(make_pretrain_spec("ref", f"file://{tmp_path}/store", stage_assets), tmp_path / "w1")
    assert ref.succeeded and ref.stages[0][1].restarts == 0

    pids: dict[str, int] = {}
    killed = threading.Event()
    store_root = tmp_path / "store" / "killed" / "pretrain"

    def listener(event, data):
        if event == "started":
            pids[data["replica"]] = data["pid"]

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not (store_root / "checkpoints" / "latest").exists():
            time.sleep(0.02)
        agent = psutil.Process(pids["worker-0"])
        trainer = agent.children(recursive=True)[0]  # torchrun's worker: the rank-1 training process
        os.kill(trainer.pid, signal.SIGKILL)
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    pipeline, result = run(make_pretrain_spec("killed", f"file://{tmp_path}/store", stage_assets), tmp_path / "w2", listener)
    thread.join(5)
    job = result.stages[0][1]
    assert killed.is_set(), "the run finished before the rank could be killed"
    assert result.succeeded and job.restarts == 1, job.attempts
    assert job.attempts[0].failed_replica == "worker-0"
    master_log = (job.log_dir / "master-0.log").read_text()
    assert "resumed from step 10" in master_log

    a, b = weights(ref_pipeline.output_of(ref_pipeline.stage("pretrain"))), weights(pipeline.output_of(pipeline.stage("pretrain")))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # The metrics log covers every step once, despite the restart.
    out = open_store(pipeline.output_of(pipeline.stage("pretrain")))
    steps = [json.loads(l)["step"] for l in out.get_bytes("metrics/rank-0.jsonl").decode().splitlines()
             if json.loads(l).get("event") == "step"]
    assert steps == list(range(1, 31))
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert model.config.model_type == "qwen2" and not model.config.tie_word_embeddings
