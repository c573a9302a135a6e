"""TrainingSession's checkpoints and metrics log, through a real (tiny, in-process) SFT stage."""

import pytest
from alignment_assets import Crash, run_stage, tiny_policy, write_jsonl
from stage_runs import step_records

from zhinao.checkpoint import CheckpointManager
from zhinao.storage import open_store
from zhinao.synthetic import sft_conversations


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
