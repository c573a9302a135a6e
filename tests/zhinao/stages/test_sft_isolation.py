"""`packing: document` isolates examples at micro-batch > 1 on every attention path: the packed
micro-batch's outputs equal each example's own forward pass.

Flash attention does not run on CPU, so its path is checked through the same kwargs with a
reference varlen attention registered in transformers' AttentionInterface: it reads
`cu_seq_lens_q` exactly as flash-attn's varlen kernel does and attends within each segment only.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from zhinao.chat import IGNORE_INDEX
from zhinao.data.sft_packing import pack_examples
from zhinao.losses import lm_loss
from zhinao.model import build_config, build_model
from zhinao.stages.sft import sft_loss, to_batch

VARLEN_REFERENCE = "varlen_reference"


def varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Causal attention within each cu_seq_lens_q segment of a (1, H, T, D) flat row."""
    bounds = kwargs["cu_seq_lens_q"].tolist()
    assert query.shape[0] == 1 and bounds[-1] == query.shape[2]
    assert kwargs["max_length_q"] == max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    out = torch.empty_like(query)
    for a, b in zip(bounds, bounds[1:], strict=False):
        out[:, :, a:b] = F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(VARLEN_REFERENCE, varlen_reference)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_REFERENCE, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])


def examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(1, 64, size=n).tolist()
        out.append((ids, [IGNORE_INDEX] + ids[1:]))
    return out


@pytest.fixture(scope="module")
def model():
    config = build_config("tiny", vocab_size=64, max_position_embeddings=64, attention="eager")
    return build_model(config, seed=0).eval()


@pytest.fixture(scope="module")
def packed():
    # rows of 16: [5, 6, pad] [7, 4, 3, pad] [9, 7] (full): three rows, one micro-batch
    return pack_examples(examples([5, 6, 7, 4, 3, 9, 7]), max_len=16, pad_id=0)


def alone(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def row_spans(packed, rows):
    """(row in the micro-batch, start, end, example tokens) of every example."""
    for i, r in enumerate(rows):
        for d in range(int(packed.doc_ids[r].max()) + 1):
            at = np.flatnonzero(packed.doc_ids[r] == d)
            yield i, int(at[0]), int(at[-1]) + 1, packed.input_ids[r, at].tolist()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_block_causal_micro_batch_equals_each_example_alone(model, packed, attention):
    model.set_attn_implementation(attention)
    rows = np.arange(len(packed))
    assert len(rows) == 3
    batch = to_batch(packed, rows, "document", attention, torch.device("cpu"))
    assert "cu_seq_lens_q" not in batch and batch["attention_mask"].shape == (3, 1, 16, 16)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for i, a, b, ids in row_spans(packed, rows):
        torch.testing.assert_close(logits[i, a:b], alone(model, ids), atol=1e-5, rtol=1e-5)


def test_flash_micro_batch_is_flattened_with_boundaries_that_isolate_examples(model, packed):
    rows = np.array([2, 0, 1])  # any order of rows
    batch = to_batch(packed, rows, "document", "flash_attention_2", torch.device("cpu"))
    assert batch["input_ids"].shape == (1, 48) and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == [0, 9, 16, 21, 27, 32, 39, 43, 46, 48]
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"] and batch["max_length_q"] == 9
    model.set_attn_implementation(VARLEN_REFERENCE)
    try:
        with torch.no_grad():
            flat = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0].view(3, 16, -1)
            loss_flat = sft_loss(model, batch)
    finally:
        model.set_attn_implementation("eager")
    for i, a, b, ids in row_spans(packed, rows):
        torch.testing.assert_close(flat[i, a:b], alone(model, ids), atol=1e-5, rtol=1e-5)
    rows_batch = to_batch(packed, rows, "document", "eager", torch.device("cpu"))
    with torch.no_grad():  # the same loss as the block-causal (3, 16) rows: no target gained or lost
        torch.testing.assert_close(loss_flat, sft_loss(model, rows_batch), atol=1e-5, rtol=1e-5)
        assert int((batch["labels"] != IGNORE_INDEX).sum()) == int((rows_batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_naive_packing_keeps_rows_and_lets_examples_see_each_other(model, packed):
    model.set_attn_implementation("sdpa")
    rows = np.arange(len(packed))
    batch = to_batch(packed, rows, "naive", "flash_attention_2", torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 16) and set(batch) == {"input_ids", "labels", "position_ids"}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    _, a, b, ids = list(row_spans(packed, rows))[1]  # the second example of the first row
    assert not torch.allclose(logits[0, a:b], alone(model, ids), atol=1e-3)
    assert lm_loss(logits, batch["labels"]).item() > 0
