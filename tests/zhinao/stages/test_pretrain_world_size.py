"""A pretrain run stopped after a checkpoint and resumed with another number of ranks, through the
local PyTorchJob runner: with `stream.elastic` it reads exactly the global prefix of its data (each
sample once) and finishes; with the default order it is refused with one line naming the setting,
and so is a DeepSpeed ZeRO checkpoint."""

import json
import re
from collections import Counter

import pytest
from stage_runs import refusal, run, stage_output, step_records, stop_after_a_checkpoint

from zhinao.artifacts import StageOutput
from zhinao.data.stream_order import StreamOrder

pytestmark = pytest.mark.slow

SEED, MAX_STEPS, MICRO_BATCH = 1234, 30, 4


def spec(make_pretrain_spec, stage_assets, tmp_path, name: str, *, replicas: int, stream: dict, **params) -> str:
    body = json.loads(
        make_pretrain_spec(
            name,
            f"file://{tmp_path}/store",
            stage_assets,
            replicas=replicas,
            seed=SEED,
            maxSteps=MAX_STEPS,
            microBatchSize=MICRO_BATCH,
            stream=stream,
            **params,
        )
    )
    body["spec"]["stages"][0]["backoffLimit"] = 0  # a stopped run stays stopped: the next one resumes it
    return json.dumps(body)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_an_elastic_run_stopped_on_2_ranks_resumes_on_1_reading_the_global_prefix_once(
    tmp_path, stage_assets, make_pretrain_spec, engine
):
    name = f"elastic-{engine}"
    stream = {"elastic": True, "recordSamples": True}
    text = lambda replicas: spec(  # noqa: E731
        make_pretrain_spec, stage_assets, tmp_path, name, replicas=replicas, stream=stream, engine=engine
    )
    stopped = stop_after_a_checkpoint(text(2), tmp_path / "w-stopped", tmp_path / "store" / name / "pretrain")

    pipeline, result = run(text(1), tmp_path / "w-resumed")
    job = result.stages[0][1]
    log = (job.log_dir / "master-0.log").read_text()
    assert result.succeeded, log[-3000:]
    assert f"resumed from step {stopped}" in log and "resuming a checkpoint of 2 ranks with 1" in log, log[-3000:]
    assert f"engine {engine}" in log

    out = stage_output(pipeline, "pretrain")
    first = step_records(out, rank=0)
    assert [r["step"] for r in first] == list(range(1, MAX_STEPS + 1))  # every step once, across both runs
    # What was trained on: both ranks' steps up to the checkpoint (the steps after it were redone), then one rank's.
    read = [tuple(i) for r in first + step_records(out, rank=1) if r["step"] <= stopped for i in r["sample_ids"]]
    read += [tuple(i) for r in first if r["step"] > stopped for i in r["sample_ids"]]
    samples = 2 * MICRO_BATCH * stopped + MICRO_BATCH * (MAX_STEPS - stopped)
    index = StageOutput(out).read_tokens_index()
    assert samples <= index.sequences  # within one epoch, so "no sample twice" is a count
    assert len(read) == samples and len(set(read)) == samples
    order = StreamOrder([s.sequences for s in index.shards], seed=SEED, rank=0, world_size=1, window=8192, elastic=True)
    assert Counter(read) == Counter(order.locate_global(g) for g in range(samples))  # the global prefix
    last = json.loads(out.get_bytes(f"checkpoints/step-{MAX_STEPS:08d}/manifest.json"))["meta"]
    assert last["data"]["sample"] == samples and last["world_size"] == 1
    seq_len = index.seq_len
    assert last["tokens"] == samples * seq_len  # 2 ranks' tokens up to the checkpoint, then 1 rank's
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["steps"] == MAX_STEPS and summary["hf"]
    assert summary["tokens"] == samples * seq_len


@pytest.mark.parametrize(
    ("name", "params", "says", "loaded"),
    [
        # Each rank's share of the default order depends on the world size: refused after the weights
        # loaded (they would reshard), before any step.
        (
            "fixed",
            {"stream": {}},
            r"data position: the checkpoint was written by 2 data-parallel ranks and this run has 1; .*stream\.elastic.*",
            True,
        ),
        # ZeRO's optimizer state is cut into one partition per saving rank, and DeepSpeed does not re-cut
        # it on load: refused before anything is loaded, even with an elastic data order.
        (
            "zero",
            {"stream": {"elastic": True}, "zeroStage": 2},
            r"checkpoints: step {step} of \S+ was written by 2 ranks and this run has 1: DeepSpeed ZeRO .*"
            r"engine: fsdp or ddp.*",
            False,
        ),
    ],
    ids=["default-order", "deepspeed"],
)
def test_a_run_that_cannot_resume_with_another_world_size_is_refused_in_one_line(
    tmp_path, stage_assets, make_pretrain_spec, name, params, says, loaded
):
    text = lambda replicas: spec(make_pretrain_spec, stage_assets, tmp_path, name, replicas=replicas, **params)  # noqa: E731
    stopped = stop_after_a_checkpoint(text(2), tmp_path / "w-stopped", tmp_path / "store" / name / "pretrain")

    _, result = run(text(1), tmp_path / "w-resumed")
    line, log = refusal(result)
    assert re.fullmatch(rf"rank 0: SystemExit: {says.format(step=stopped)}", line), line
    assert (f"resumed from step {stopped}" in log) == loaded, log[-3000:]
