"""The seeded per-rank order of the token stream: shares, determinism and the saved position."""

import pytest

from zhinao.data.stream_order import PositionMismatch, StreamOrder, StreamPosition

COUNTS = [5, 7, 3, 9, 1, 6]  # 31 sequences in 6 shards


def epoch(rank: int, world_size: int, *, seed: int = 1, window: int = 4, e: int = 0) -> list[tuple[int, int]]:
    order = StreamOrder(COUNTS, seed=seed, rank=rank, world_size=world_size, window=window)
    return [order.locate(e, k) for k in range(order.per_rank)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_read_disjoint_shares_that_cover_the_epoch_but_the_remainder(world_size):
    shares = [epoch(r, world_size) for r in range(world_size)]
    seen = [s for share in shares for s in share]
    assert len(seen) == len(set(seen)) == 31 // world_size * world_size
    assert {len(share) for share in shares} == {31 // world_size}
    assert all(0 <= i < COUNTS[shard] for shard, i in seen)


def test_the_order_is_a_function_of_the_seed_and_changes_with_the_epoch():
    assert epoch(0, 1) == epoch(0, 1)
    assert epoch(0, 1) != epoch(0, 1, seed=2)
    assert epoch(0, 1) != epoch(0, 1, e=1)
    assert sorted(epoch(0, 1)) == sorted(epoch(0, 1, e=1))


def test_a_window_reads_only_the_shards_it_names():
    order = StreamOrder(COUNTS, seed=3, rank=1, world_size=2, window=4)
    for start in range(0, order.per_rank, 4):
        wanted = set(order.shards_of_window(0, start))
        assert {order.locate(0, k)[0] for k in range(start, min(start + 4, order.per_rank))} <= wanted


def test_the_position_round_trips_and_wraps_into_the_next_epoch():
    order = StreamOrder(COUNTS, seed=1, rank=0, world_size=2, window=4)
    pos = StreamPosition()
    pos.advance(20, order.per_rank)
    assert (pos.epoch, pos.offset) == (1, 5)
    assert order.position(order.state(pos)) == pos


def test_a_position_from_another_world_size_or_corpus_is_refused_with_the_reason():
    state = StreamOrder(COUNTS, seed=1, rank=0, world_size=4, window=4).state(StreamPosition(0, 3))
    with pytest.raises(PositionMismatch, match="written by 4 data-parallel ranks and this run has 2"):
        StreamOrder(COUNTS, seed=1, rank=0, world_size=2, window=4).position(state)
    with pytest.raises(PositionMismatch, match="the data or the seed changed"):
        StreamOrder([*COUNTS, 2], seed=1, rank=0, world_size=4, window=4).position(state)


def test_fewer_sequences_than_ranks_is_an_error():
    with pytest.raises(ValueError, match="3 samples, fewer than the 4 ranks"):
        StreamOrder([3], seed=1, rank=0, world_size=4, window=4)


def read_in_lockstep(world_size: int, steps: int, *, state: dict | None = None, take: int = 3) -> tuple[list, dict]:
    """Every rank of an elastic stream reads `take` samples per step for `steps` steps (from `state`);
    returns (the samples in the order read, the position every rank then saves)."""
    orders = [
        StreamOrder(COUNTS, seed=1, rank=r, world_size=world_size, window=4, elastic=True) for r in range(world_size)
    ]
    positions = [o.position(state) if state else StreamPosition() for o in orders]
    read = []
    for _ in range(steps):
        for order, pos in zip(orders, positions, strict=True):
            for _ in range(take):
                read.append(order.at(pos))
                pos.advance(1, order.per_rank)
    states = [o.state(p) for o, p in zip(orders, positions, strict=True)]
    assert all(s == states[0] for s in states)  # one position describes every rank
    return read, states[0]


@pytest.mark.parametrize("after", [1, 4, 3])
def test_an_elastic_position_resumes_with_another_world_size_without_repeat_or_skip(after):
    before, state = read_in_lockstep(2, 4)  # 24 samples: into the second epoch of 31 after the resume
    resumed, _ = read_in_lockstep(after, 12, state=state)
    everything = before + resumed
    reference, _ = read_in_lockstep(1, 60)  # one rank, never interrupted: the global stream
    # both runs together read exactly the global stream's prefix: nothing repeated, nothing skipped
    assert state["sample"] == 24 and sorted(everything) == sorted(reference[: len(everything)])
    # counted per epoch of 31: every sample exactly once, none dropped at the epoch's end
    first, second = reference[:31], reference[31:62]
    assert len(set(first)) == len(first) == 31 and set(second) == set(first) and first != second


def test_elastic_and_contiguous_positions_are_not_mixed_up():
    contiguous = StreamOrder(COUNTS, seed=1, rank=0, world_size=2, window=4)
    elastic = StreamOrder(COUNTS, seed=1, rank=0, world_size=2, window=4, elastic=True)
    with pytest.raises(
        PositionMismatch, match="written with the contiguous stream order and this run reads the elastic"
    ):
        elastic.position(contiguous.state(StreamPosition(0, 3)))
    with pytest.raises(PositionMismatch, match="written with the elastic stream order"):
        contiguous.position(elastic.state(StreamPosition(0, 3)))
    with pytest.raises(PositionMismatch, match="with stream.elastic"):
        StreamOrder(COUNTS, seed=1, rank=0, world_size=1, window=4).position(contiguous.state(StreamPosition()))
