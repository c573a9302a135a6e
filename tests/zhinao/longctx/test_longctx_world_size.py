"""A long-context run stopped after a checkpoint and resumed with another layout of ranks, through
the local PyTorchJob runner (zhinao.longctx.resume_layout says which layouts continue):

* another sequence-parallel degree over the same data-parallel streams (2 ranks splitting every
  sequence -> 1 rank holding whole ones) continues the default order exactly, under FSDP2, whose
  checkpoint reshards from the ("dp", "sp") mesh to one rank;
* another number of data-parallel groups continues the elastic order at its global sample, and is
  refused in one line without it.
"""

import json
import re
from collections import Counter

import pytest
from stage_runs import refusal, run, stage_output, step_records, stop_after_a_checkpoint

from zhinao.artifacts import StageOutput
from zhinao.data.stream_order import StreamOrder, StreamPosition

SEED, MAX_STEPS, MICRO_BATCH, WINDOW = 1234, 9, 2, 8192


def spec(make_longctx_spec, base_model, corpus, tmp_path, name: str, *, ranks: int, sp: int, stream: dict) -> str:
    return make_longctx_spec(
        name,
        f"file://{tmp_path}/store",
        base_model,
        corpus,
        replicas=ranks,
        nproc=1,
        backoff_limit=0,  # a stopped run stays stopped: the next one resumes it
        engine="fsdp",
        seed=SEED,
        sequenceParallel=sp,
        microBatchSize=MICRO_BATCH,
        maxSteps=MAX_STEPS,
        checkpointEvery=3,
        needle={"enabled": False},  # after training: no part in the resume
        stream={"recordSamples": True, **stream},
    )


def read_ids(records: list[dict]) -> list[tuple[int, int]]:
    return [tuple(i) for r in records for i in r["sample_ids"]]


def test_two_sequence_parallel_ranks_resume_on_one_rank_reading_the_same_sequences_in_order(
    tmp_path, stage_assets, longctx_base_model, make_longctx_spec
):
    text = lambda ranks, sp: spec(  # noqa: E731
        make_longctx_spec,
        longctx_base_model,
        stage_assets["corpus"],
        tmp_path,
        "regroup",
        ranks=ranks,
        sp=sp,
        stream={},
    )
    stopped = stop_after_a_checkpoint(text(2, 2), tmp_path / "w-stopped", tmp_path / "store" / "regroup" / "longctx")

    pipeline, result = run(text(1, 1), tmp_path / "w-resumed")
    log = (result.stages[0][1].log_dir / "master-0.log").read_text()
    assert result.succeeded, log[-3000:]
    assert f"resumed from step {stopped}" in log, log[-3000:]
    assert (
        f"resuming step {stopped} of 2 ranks (1 data-parallel x 2 sequence-parallel) with 1 ranks "
        "(1 data-parallel x 1 sequence-parallel): the same data-parallel streams (1), regrouped" in log
    ), log[-3000:]

    out = stage_output(pipeline, "longctx")
    first, second = step_records(out, rank=0), step_records(out, rank=1)
    assert [r["step"] for r in first] == list(range(1, MAX_STEPS + 1))  # every step once, across both runs
    # Both ranks of the sequence-parallel group read the same sequences up to the checkpoint.
    assert read_ids(second) == read_ids([r for r in first if r["step"] <= stopped]), second
    # What the stopped and the resumed run trained on is what one uninterrupted data-parallel stream reads.
    index = StageOutput(out).read_tokens_index()
    order = StreamOrder([s.sequences for s in index.shards], seed=SEED, rank=0, world_size=1, window=WINDOW)
    position, expected = StreamPosition(), []
    for _ in range(MAX_STEPS * MICRO_BATCH):
        expected.append(order.at(position))
        position.advance(1, order.per_rank)
    read = read_ids(first)
    assert read == expected
    assert len(read) <= index.sequences and len(set(read)) == len(read)  # within one epoch: none twice
    last = json.loads(out.get_bytes(f"checkpoints/step-{MAX_STEPS:08d}/manifest.json"))["meta"]
    assert last["world_size"] == 1 and last["sequence_parallel"] == 1
    assert last["data"] == order.state(position)
    assert json.loads(out.get_bytes("summary.json"))["steps"] == MAX_STEPS


@pytest.mark.slow
def test_one_group_of_two_resumes_as_two_groups_of_one_with_the_elastic_stream_reading_the_global_prefix_once(
    tmp_path, stage_assets, longctx_base_model, make_longctx_spec
):
    text = lambda sp: spec(  # noqa: E731
        make_longctx_spec,
        longctx_base_model,
        stage_assets["corpus"],
        tmp_path,
        "elastic",
        ranks=2,
        sp=sp,
        stream={"elastic": True},
    )
    stopped = stop_after_a_checkpoint(text(2), tmp_path / "w-stopped", tmp_path / "store" / "elastic" / "longctx")

    pipeline, result = run(text(1), tmp_path / "w-resumed")
    log = (result.stages[0][1].log_dir / "master-0.log").read_text()
    assert result.succeeded, log[-3000:]
    assert "(2 data-parallel x 1 sequence-parallel): the elastic stream continues" in log, log[-3000:]

    out = stage_output(pipeline, "longctx")
    first, second = step_records(out, rank=0), step_records(out, rank=1)
    # Up to the checkpoint one group read (both its ranks the same sequences), after it two.
    read = read_ids([r for r in first if r["step"] <= stopped])
    read += read_ids([r for r in first + second if r["step"] > stopped])
    samples = MICRO_BATCH * stopped + 2 * MICRO_BATCH * (MAX_STEPS - stopped)
    index = StageOutput(out).read_tokens_index()
    order = StreamOrder(
        [s.sequences for s in index.shards], seed=SEED, rank=0, world_size=1, window=WINDOW, elastic=True
    )
    assert Counter(read) == Counter(order.locate_global(g) for g in range(samples))  # the global prefix
    last = json.loads(out.get_bytes(f"checkpoints/step-{MAX_STEPS:08d}/manifest.json"))["meta"]
    assert last["data"]["sample"] == samples and last["world_size"] == 2 and last["sequence_parallel"] == 1


@pytest.mark.slow
def test_another_number_of_data_parallel_groups_without_the_elastic_stream_is_refused_in_one_line(
    tmp_path, stage_assets, longctx_base_model, make_longctx_spec
):
    text = lambda sp: spec(  # noqa: E731
        make_longctx_spec, longctx_base_model, stage_assets["corpus"], tmp_path, "fixed", ranks=2, sp=sp, stream={}
    )
    stopped = stop_after_a_checkpoint(text(2), tmp_path / "w-stopped", tmp_path / "store" / "fixed" / "longctx")

    _, result = run(text(1), tmp_path / "w-resumed")
    line, _ = refusal(result)
    assert re.fullmatch(  # every rank refuses: whichever exits first is the job's failure
        rf"rank [01]: SystemExit: longctx: the checkpoint of step {stopped} was written by 2 ranks \(1 data-parallel x 2 "
        r"sequence-parallel\) and this run has 2 ranks \(2 data-parallel x 1 sequence-parallel\); .* Resume with 1 "
        r"data-parallel groups \(1 ranks at sequenceParallel 1\), or .*stream\.elastic.*",
        line,
    ), line
