"""Naive and per-document SFT packing, including attention isolation on a real tiny model."""

import numpy as np
import pytest
import torch

from zhinao.chat import IGNORE_INDEX as X
from zhinao.data.sft_packing import PAD_DOC, block_causal_mask, flatten_varlen, pack_examples, position_ids
from zhinao.model import build_config, build_model


def ex(n, start):
    ids = list(range(start, start + n))
    return ids, [X] + ids[1:]


def test_greedy_packing_in_order_skips_overlong_and_pads():
    packed = pack_examples([ex(3, 10), ex(4, 20), ex(9, 30), ex(2, 40), ex(5, 50)], max_len=8, pad_id=0)
    assert packed.skipped == 1  # the 9-token example
    assert packed.input_ids.tolist() == [
        [10, 11, 12, 20, 21, 22, 23, 0],
        [40, 41, 50, 51, 52, 53, 54, 0],
    ]
    assert packed.labels.tolist() == [
        [X, 11, 12, X, 21, 22, 23, X],
        [X, 41, X, 51, 52, 53, 54, X],
    ]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1, PAD_DOC], [0, 0, 1, 1, 1, 1, 1, PAD_DOC]]
    assert position_ids(packed.doc_ids, "naive").tolist()[0] == list(range(8))
    assert position_ids(packed.doc_ids, "document").tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 2, 3, 4, 5]]


def test_varlen_flattening_of_a_two_row_micro_batch():
    packed = pack_examples([ex(3, 10), ex(4, 20), ex(2, 40), ex(6, 50)], max_len=8, pad_id=0)
    flat = flatten_varlen(packed.input_ids, packed.labels, packed.doc_ids)
    assert flat.input_ids.tolist() == [[10, 11, 12, 20, 21, 22, 23, 0, 40, 41, 50, 51, 52, 53, 54, 55]]
    # one segment per example and one for the padding run; none crosses the row boundary at 8
    assert flat.cu_seqlens.tolist() == [0, 3, 7, 8, 10, 16]
    assert flat.cu_seqlens.dtype == np.int32 and flat.max_seqlen == 6
    assert flat.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 4, 5]]
    # the second row's first label is never a target (as in the (2, 8) rows' shifted loss)
    assert flat.labels.tolist() == [[X, 11, 12, X, 21, 22, 23, X, X, 41, X, 51, 52, 53, 54, 55]]


def test_varlen_segments_of_full_rows_split_at_the_row_boundary():
    doc_ids = np.array([[0, 0, 0], [0, 0, 0]])  # the same doc id in consecutive rows: two examples
    ids = np.arange(6).reshape(2, 3)
    assert flatten_varlen(ids, ids, doc_ids).cu_seqlens.tolist() == [0, 3, 6]


def test_block_causal_mask():
    doc = np.array([[0, 0, 1, PAD_DOC]])
    m = block_causal_mask(doc)[0, 0]
    assert m.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_document_packing_isolates_examples_and_naive_does_not():
    torch.manual_seed(0)
    model = build_model(
        build_config("tiny", vocab_size=64, max_position_embeddings=64, attention="sdpa"), seed=0
    ).eval()
    a, b = ex(5, 3), ex(6, 20)
    packed = pack_examples([a, b], max_len=16, pad_id=0)
    ids = torch.from_numpy(packed.input_ids)
    allowed = torch.from_numpy(block_causal_mask(packed.doc_ids))
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b[0]])).logits[0]
        doc = model(
            input_ids=ids, position_ids=torch.from_numpy(packed.position_ids("document")), attention_mask=mask
        ).logits[0, 5:11]
        naive = model(input_ids=ids, position_ids=torch.from_numpy(packed.position_ids("naive"))).logits[0, 5:11]
    torch.testing.assert_close(doc, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(naive, alone, atol=1e-3)


def test_unknown_mode_and_mismatched_lengths_are_errors():
    with pytest.raises(ValueError):
        position_ids(np.zeros((1, 2), dtype=np.int64), "bogus")
    with pytest.raises(ValueError):
        pack_examples([([1, 2], [1])], max_len=4, pad_id=0)


@pytest.mark.parametrize("mode", ["naive", "document"])
def test_position_ids_of_a_micro_batch_are_those_rows_of_the_whole_set(mode):
    rng = np.random.default_rng(0)
    packed = pack_examples([ex(int(n), 1) for n in rng.integers(1, 12, size=200)], max_len=16, pad_id=0)
    rows = np.array([7, 0, len(packed) - 1, 7])
    np.testing.assert_array_equal(packed.position_ids(mode, rows), packed.position_ids(mode)[rows])
