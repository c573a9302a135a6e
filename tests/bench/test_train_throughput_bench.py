"""bench/train_throughput.py at toy size: the Trainer and our stage under DDP and under FSDP2 (a
single-rank gloo group) all train, alternate, and report tokens per second and per CPU second."""

import logging
import os

import pytest
import torch.distributed as dist
from scripts import load_script


@pytest.mark.slow
def test_every_engine_and_the_trainer_train_and_are_compared(caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer may write next to its output_dir
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "ZHINAO_METRICS_PORT",
        "ZHINAO_PEAK_FLOPS",
        "ZHINAO_WORKDIR",
    ):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.INFO, logger="zhinao.training.engine_builder"):
        result = load_script("bench/train_throughput.py").measure(
            steps=2, seq_len=32, micro_batch=2, model_size="tiny", rounds=1, threads=1, engines=["ddp", "fsdp"]
        )
    engines = [r.getMessage().split(",")[0] for r in caplog.records if r.getMessage().startswith("engine ")]
    assert engines == ["engine ddp", "engine fsdp"]  # the stage really built each engine
    # The single-rank group is gone after the FSDP2 run, and so is its environment (which would
    # make the next round's Trainer start a distributed run).
    assert not dist.is_initialized() and "WORLD_SIZE" not in os.environ and "LOCAL_RANK" not in os.environ
    # Nor does the stage's environment stay behind (a later test would find its metrics port taken).
    assert not {"ZHINAO_METRICS_PORT", "ZHINAO_PEAK_FLOPS", "ZHINAO_WORKDIR"} & set(os.environ)
    for side in ("hf_trainer", "ddp", "fsdp"):
        wall, cpu = result["runs"][side][0]
        assert wall > 0 and cpu > 0, side
        assert result["tokens_per_cpu_s"][side] == cpu
    for engine in ("ddp", "fsdp"):
        expected = result["tokens_per_cpu_s"][engine] / result["tokens_per_cpu_s"]["hf_trainer"]
        assert abs(result["cpu_ratio_to_trainer"][engine] - expected) < 1e-3
    assert result["config"]["threads"] == 1 and result["config"]["loss_chunk_tokens"] > 0
