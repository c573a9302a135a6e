"""A long-context job that loses a rank mid-run: the runner restarts it, it resumes from its last
checkpoint, and ends with the same weights as a run that was never interrupted.

Two pods (Master + Worker) of one process each form one sequence-parallel group: every sequence is
split across both ranks, so the ring (and the resume) crosses processes. Under DDP each checkpoint
is rank 0's full copy; under FSDP2 each rank writes and reloads its own shards (DCP).
"""

import json
from pathlib import Path

import pytest
from alignment_assets import assert_same_weights, hf_weights
from stage_runs import (
    assert_restarted_and_resumed,
    in_any_generation,
    run,
    run_killing_a_rank,
    stage_output,
    step_records,
)

pytestmark = pytest.mark.slow

# The needle eval runs after training on rank 0 only: it has no part in the resume, so it is off.
PARAMS = dict(replicas=2, nproc=1, backoff_limit=6, maxSteps=9, checkpointEvery=3, needle={"enabled": False})


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_sigkill_of_a_sequence_parallel_rank_resumes_to_identical_weights(
    tmp_path, stage_assets, longctx_base_model, make_longctx_spec, engine
):
    store = f"file://{tmp_path}/store"

    def spec(name: str) -> str:
        return make_longctx_spec(name, store, longctx_base_model, stage_assets["corpus"], engine=engine, **PARAMS)

    ref_pipeline, ref = run(spec("ref"), tmp_path / "w1")
    ref_log = (ref.stages[0][1].log_dir / "master-0.log").read_text()
    assert ref.succeeded and ref.stages[0][1].restarts == 0, ref_log[-3000:]
    assert f"engine {engine}," in ref_log

    pipeline, result, killed = run_killing_a_rank(
        spec("killed"),
        tmp_path / "w2",
        replica="worker-0",
        once_exists=in_any_generation(tmp_path / "store" / "killed" / "longctx", "checkpoints/latest"),
    )
    assert_restarted_and_resumed(result, killed=killed, replica="worker-0", step=3)

    ref_uri, out_uri = (p.output_of(p.stage("longctx")) for p in (ref_pipeline, pipeline))
    assert_same_weights(hf_weights(ref_uri), hf_weights(out_uri))

    # Both ranks log every step once, despite the restart, and the summary counts the whole run.
    out = stage_output(pipeline, "longctx")
    for rank in (0, 1):
        assert [r["step"] for r in step_records(out, rank)] == list(range(1, 10)), rank
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["steps"] == 9 and summary["sequence_parallel"] == 2
    assert summary["loss_last"] < summary["loss_first"]
    # The restarted job re-applies the RoPE base before loading the checkpoint: the export keeps it.
    config = json.loads(Path(summary["hf"].removeprefix("file://"), "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 5e7
