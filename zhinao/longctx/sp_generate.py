"""Greedy generation with the prompt spread over a sequence-parallel group (long needle cells).

Every rank of the group calls `generate` with the same prompts. The prompt's first T' tokens
(T' the largest multiple of the layout's chunk count) are prefilled through the ring, each rank
caching the K/V of its own shard; the remaining < 2S prompt tokens and every generated token are
then fed one step at a time, all ranks in lockstep, with attention over the whole distributed
cache (zhinao.longctx.sequence_parallel.decode_attention). No rank ever holds more than its shard
of the prompt's KV cache plus the decoded tokens. Every rank ends with the same tokens.

The model must use the ring (`model.set_attn_implementation(activate_sequence_parallel(sp))`).
"""

import torch
import torch.distributed as dist
from transformers import DynamicCache

from zhinao.longctx.sequence_parallel import SequenceParallel, decode_state, shard_batch, shard_spans


def _prefill_length(seq_len: int, sp: SequenceParallel) -> int:
    parts = sp.size * (2 if sp.sharding == "zigzag" else 1)
    return seq_len - seq_len % parts


def _step(model, tokens: torch.Tensor, position: int, cache) -> torch.Tensor:
    positions = torch.full_like(tokens, position)
    return model(input_ids=tokens, position_ids=positions, cache=cache, use_cache=True).logits[:, -1]


@torch.no_grad()
def generate(
    model, input_ids: torch.Tensor, sp: SequenceParallel, *, max_new_tokens: int, stop_ids: list[int]
) -> torch.Tensor:
    """[batch, new tokens] greedy continuations of [batch, T] prompts; a row that hit a stop id is
    padded with that id (callers decode with skip_special_tokens, as after model.generate)."""
    batch, seq_len = input_ids.shape
    prefill = _prefill_length(seq_len, sp)
    if prefill == 0:
        raise ValueError(f"a prompt of {seq_len} tokens is too short for sequence parallelism over {sp.size} ranks")
    cache = DynamicCache(config=model.config)
    ids, positions, _ = shard_batch(input_ids[:, :prefill], sp)
    decode_state.prefill_keys = ids.shape[1]
    try:
        logits = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True).logits
        # The last prefilled position's logits, from the rank that holds it (a sum with zeros is exact).
        offset = 0
        last = torch.zeros(batch, logits.shape[-1], dtype=torch.float32, device=input_ids.device)
        for span in shard_spans(prefill, sp):
            if prefill - 1 in span:
                last = logits[:, offset + prefill - 1 - span.start].float().contiguous()  # all_reduce needs it
            offset += len(span)
        dist.all_reduce(last, group=sp.group)
        for position in range(prefill, seq_len):
            last = _step(model, input_ids[:, position : position + 1], position, cache).float()
        stop = torch.tensor(stop_ids, device=input_ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        new: list[torch.Tensor] = []
        for i in range(max_new_tokens):
            token = torch.where(done, new[-1] if new else stop[0], last.argmax(-1))
            new.append(token)
            done |= torch.isin(token, stop)
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            last = _step(model, token[:, None], seq_len + i, cache).float()
    finally:
        decode_state.prefill_keys = None
    return torch.stack(new, dim=1)
