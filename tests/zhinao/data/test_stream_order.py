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
