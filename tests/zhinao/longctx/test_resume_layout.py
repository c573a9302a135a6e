"""Which long-context checkpoints resume with another layout of ranks (zhinao.longctx.resume_layout):
a sequence-parallel regrouping of the same data-parallel streams always, a change in the number of
data-parallel groups only with the elastic stream; otherwise one line naming both layouts and what to do."""

import pytest

from zhinao.longctx.resume_layout import LayoutMismatch, resume_layout


def meta(world_size: int, sequence_parallel: int) -> dict:
    return {"step": 3, "world_size": world_size, "sequence_parallel": sequence_parallel}


@pytest.mark.parametrize(
    ("saved", "now", "elastic", "says"),
    [
        ({}, (2, 2), False, None),  # a fresh start
        (meta(2, 2), (2, 2), False, None),
        (meta(2, 2), (1, 1), False, "of 2 ranks (1 data-parallel x 2 sequence-parallel) with 1 ranks (1 data-parallel"),
        (meta(4, 2), (8, 4), False, "the same data-parallel streams (2), regrouped"),
        (meta(2, 2), (2, 1), True, "with 2 ranks (2 data-parallel x 1 sequence-parallel): the elastic stream"),
        (meta(4, 2), (2, 2), True, "the elastic stream continues"),
    ],
)
def test_a_layout_that_resumes_exactly_is_logged(saved, now, elastic, says):
    line = resume_layout(saved, world_size=now[0], sequence_parallel=now[1], elastic=elastic)
    assert line == says if says is None else says in line


@pytest.mark.parametrize(
    ("saved", "now", "why"),
    [
        (meta(2, 2), (2, 1), "2 ranks (1 data-parallel x 2 sequence-parallel) and this run has 2 ranks (2 data-"),
        (meta(4, 2), (2, 2), "Resume with 2 data-parallel groups (4 ranks at sequenceParallel 2)"),
        (meta(2, 1), (1, 1), "Resume with 2 data-parallel groups (2 ranks at sequenceParallel 1)"),
    ],
)
def test_another_number_of_data_parallel_groups_without_the_elastic_stream_is_refused_in_one_line(saved, now, why):
    with pytest.raises(LayoutMismatch) as err:
        resume_layout(saved, world_size=now[0], sequence_parallel=now[1], elastic=False)
    line = str(err.value)
    assert "\n" not in line and line.startswith("longctx: the checkpoint of step 3 was written by ")
    assert why in line and "stream.elastic" in line
