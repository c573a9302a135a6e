"""The token-shard format: packing per source in shard-sized pieces, and the index round trip."""

import numpy as np
import pytest

from zhinao.data.packing import pack_source
from zhinao.data.token_shards import Shard, SourcePacker, SpanPacker, TokenIndex, join_pieces, shard_bytes


def test_the_packer_cuts_the_same_sequences_as_packing_the_whole_source():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 100, size=int(n)).tolist() for n in rng.integers(1, 40, size=60)]
    packer = SourcePacker(seq_len=8, shard_sequences=5, eod_id=0)
    shards = [s for d in docs for s in packer.add(d)]
    tail = packer.finish()
    assert shards and all(s.shape == (5, 8) for s in shards)
    assert tail is not None and 1 <= len(tail) < 5 * 2  # what is left after the last full shard
    np.testing.assert_array_equal(np.concatenate([*shards, tail]), pack_source(docs, seq_len=8, eod_id=0))


@pytest.mark.parametrize("cuts", [(), (7,), (3, 4), (20, 21, 40), (0, 59)])
def test_spans_packed_apart_and_joined_are_the_one_packer_shards(cuts):
    """Documents split into runs at `cuts` (one run per rank, some empty or one document long), each
    packed from its offset in the stream: the whole shards plus the joined pieces are the whole
    source packed in one piece, cut every 5 sequences."""
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 100, size=int(n)).tolist() for n in rng.integers(1, 40, size=60)]
    rows = pack_source(docs, seq_len=8, eod_id=0)
    expected = [rows[i : i + 5] for i in range(0, len(rows), 5)]
    shards: dict[int, np.ndarray] = {}
    pieces: dict[int, list[np.ndarray]] = {}
    offset = 0
    for start, stop in zip((0, *cuts), (*cuts, len(docs)), strict=True):
        span = SpanPacker(offset=offset, seq_len=8, shard_sequences=5, eod_id=0)
        out = [p for d in docs[start:stop] for p in span.add(d)] + [p for p in [span.finish()] if p is not None]
        for piece in out:
            if piece.whole:
                shards[piece.shard] = piece.tokens.reshape(5, 8)
            else:
                pieces.setdefault(piece.shard, []).append(piece.tokens)
        offset += span.tokens
    assert set(shards).isdisjoint(pieces)
    for number, parts in pieces.items():
        if (joined := join_pieces(parts, seq_len=8, shard_sequences=5)) is not None:  # less than a sequence
            shards[number] = joined
    assert sorted(shards) == list(range(len(expected)))
    for number, shard in enumerate(expected):
        np.testing.assert_array_equal(shards[number], shard)


def test_less_than_one_sequence_leaves_no_shard():
    packer = SourcePacker(seq_len=8, shard_sequences=5, eod_id=0)
    assert packer.add([1, 2, 3]) == []
    assert packer.finish() is None


def test_index_round_trip_and_merge_is_sorted_by_key():
    a = TokenIndex(seq_len=8, vocab_size=99, shards=[Shard("tokens/web-r00001-00000.bin", "web", 3)], documents=4)
    b = TokenIndex(seq_len=8, vocab_size=99, shards=[Shard("tokens/web-r00000-00000.bin", "web", 2)], documents=1)
    merged = TokenIndex.merge([a, b])
    assert [s.key for s in merged.shards] == ["tokens/web-r00000-00000.bin", "tokens/web-r00001-00000.bin"]
    assert (merged.sequences, merged.documents) == (5, 5)
    again = TokenIndex.from_json(merged.to_json(), where="x")
    assert again == merged


def test_a_foreign_index_is_named_with_its_reason():
    with pytest.raises(ValueError, match=r"s3://b/tokens/index.json: not a token index: format is None"):
        TokenIndex.from_json(b'{"seq_len": 8, "shards": []}', where="s3://b/tokens/index.json")


def test_shards_are_little_endian_uint32_bytes():
    assert shard_bytes(np.array([[1, 256]], dtype=np.uint32)) == b"\x01\x00\x00\x00\x00\x01\x00\x00"
