"""TrainingSession's checkpoints and metrics log, through a real (tiny, in-process) SFT stage."""

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from alignment_assets import Crash, assert_same_weights, hf_weights, run_stage, tiny_policy, write_jsonl
from stage_runs import step_records

from zhinao.checkpoint import CheckpointManager
from zhinao.storage import open_store
from zhinao.synthetic import sft_conversations
from zhinao.terminate import Terminated, sigterm_raises
from zhinao.training.deepspeed_staging import StagingCheckpointEngine
from zhinao.training.hf_export import read_export


def test_a_rank_lost_right_after_a_checkpoint_commit_keeps_the_steps_before_it_in_the_metrics_log(
    tmp_path, monkeypatch
):
    # The restart resumes from the committed checkpoint and redoes only the later steps, so the log
    # of the steps up to it must already be in storage when `latest` names it.
    assets = {"model": tiny_policy(tmp_path / "policy"), "data": write_jsonl(tmp_path / "data", sft_conversations(40))}
    out = f"file://{tmp_path}/sft"
    params = dict(lr=3e-3, maxLen=64, microBatchSize=4, maxSteps=4, checkpointEvery=2)
    commit = CheckpointManager.commit

    def commit_then_die(self, step, *args, **kwargs):
        commit(self, step, *args, **kwargs)
        raise Crash(f"lost right after committing step {step}")

    with monkeypatch.context() as m:
        m.setattr(CheckpointManager, "commit", commit_then_die)
        with pytest.raises(Crash):
            run_stage("sft", assets, out, **params)
    store = open_store(out)
    assert store.get_bytes("checkpoints/latest").decode().strip() == "step-00000002"
    run_stage("sft", assets, out, **params)
    assert [r["step"] for r in step_records(store)] == [1, 2, 3, 4]


def _sft(tmp_path):
    assets = {"model": tiny_policy(tmp_path / "policy"), "data": write_jsonl(tmp_path / "data", sft_conversations(40))}
    return assets, f"file://{tmp_path}/sft", dict(lr=3e-3, maxLen=64, microBatchSize=4, maxSteps=4, checkpointEvery=2)


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory) -> Iterator[None]:
    """DeepSpeed runs in-process on a one-rank gloo group. One for the module: DeepSpeed keeps its
    groups from the first initialize and cannot run on a later process group."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg')}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(params=["ddp", "deepspeed"])
def engine(request, monkeypatch) -> dict:
    """The stage params that pick the engine. DeepSpeed saves its own files (collectively, in the
    training thread); everything after them runs in the background as under the other engines."""
    if request.param == "ddp":
        return {"engine": "ddp"}
    request.getfixturevalue("one_rank_group")
    monkeypatch.setenv("LOCAL_RANK", "0")  # the launcher variable DeepSpeed insists on
    return {"engine": "deepspeed", "zeroStage": 2}


def _checkpoint_events(store) -> list[dict]:
    lines = store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "checkpoint"]


def _slow_uploads(monkeypatch, seconds: float, before=lambda step: None) -> None:
    upload = CheckpointManager.upload_parts

    def slow(self, step, files):
        before(step)
        time.sleep(seconds)
        return upload(self, step, files)

    monkeypatch.setattr(CheckpointManager, "upload_parts", slow)


@pytest.mark.parametrize("background", [True, False])
def test_a_background_save_holds_training_up_only_for_the_staging(tmp_path, monkeypatch, background, engine):
    assets, out, params = _sft(tmp_path)
    _slow_uploads(monkeypatch, 1.0)
    written_on = []
    write_staged = StagingCheckpointEngine.write_staged

    def recording(self):
        written_on.append(threading.current_thread().name)
        write_staged(self)

    monkeypatch.setattr(StagingCheckpointEngine, "write_staged", recording)
    run_stage("sft", assets, out, **params, **engine, asyncCheckpoint=background, exportDtype="bf16")
    store = open_store(out)
    events = _checkpoint_events(store)
    assert [e["step"] for e in events] == [2, 4]
    for e in events:
        assert e["seconds"] >= 1.0
        # In the background the upload (1 s here) is never part of the time training waited.
        assert (e["blocking_seconds"] <= e["seconds"] - 0.9) if background else (e["blocking_seconds"] == e["seconds"])
    assert CheckpointManager(store).committed_steps() == [2, 4]
    assert [r["step"] for r in step_records(store)] == [1, 2, 3, 4]
    if engine["engine"] == "deepspeed":
        # DeepSpeed's files were serialized where the upload ran: off the training thread in the background.
        assert written_on == (["checkpoint-save"] * 2 if background else ["MainThread"] * 2)
    # The export: the Hugging Face index over bf16 shards.
    index = json.loads(store.get_bytes("hf/model.safetensors.index.json"))
    exported = read_export(Path(out.removeprefix("file://")) / "hf")
    assert set(index["weight_map"]) == set(exported) and {v.dtype for v in exported.values()} == {torch.bfloat16}


def test_a_save_that_fails_in_the_background_fails_the_stage_and_leaves_latest_on_the_previous(
    tmp_path, monkeypatch, engine
):
    assets, out, params = _sft(tmp_path)
    params |= engine

    def die_at_step_4(step):
        if step == 4:
            raise Crash("lost during the upload of step 4")

    with monkeypatch.context() as m:
        _slow_uploads(m, 0.0, die_at_step_4)
        with pytest.raises(Crash):
            run_stage("sft", assets, out, **params)
    store = open_store(out)
    assert store.get_bytes("checkpoints/latest").decode() == "step-00000002"
    assert CheckpointManager(store).committed_steps() == [2]
    # The restart resumes from step 2 and ends where an uninterrupted run ends, bit for bit.
    run_stage("sft", assets, out, **params)
    assert CheckpointManager(store).committed_steps() == [2, 4]
    assert [r["step"] for r in step_records(store)] == [1, 2, 3, 4]
    run_stage("sft", assets, f"file://{tmp_path}/reference", **params)
    assert_same_weights(hf_weights(out), hf_weights(f"file://{tmp_path}/reference"))


def test_sigterm_during_a_background_upload_waits_for_its_commit_then_exits_143(tmp_path, monkeypatch):
    assets, out, params = _sft(tmp_path)

    def sigterm_at_step_2(step):
        if step == 2:  # from the upload thread; the handler raises in the training (main) thread
            os.kill(os.getpid(), signal.SIGTERM)

    _slow_uploads(monkeypatch, 1.0, sigterm_at_step_2)
    with sigterm_raises(), pytest.raises(Terminated) as stopped:
        run_stage("sft", assets, out, **params)
    assert stopped.value.code == 143
    store = open_store(out)
    assert store.get_bytes("checkpoints/latest").decode() == "step-00000002"  # the upload was finished
    assert CheckpointManager(store).committed_steps() == [2]
    monkeypatch.undo()
    run_stage("sft", assets, out, **params)
    assert [r["step"] for r in step_records(store)] == [1, 2, 3, 4]
    assert CheckpointManager(store).committed_steps() == [2, 4]
