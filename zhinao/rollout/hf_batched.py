"""Batched generation on the training process: one KV-cached decode loop for a whole rollout step.

Every prompt of the step goes in at once, left-padded, with its sampled rows and its greedy row in
the same batch (a per-row greedy flag picks argmax or a draw), so ReMax's two generations cost one
prefill and one decode loop instead of two `generate` calls per micro-batch. Decoding runs under
bf16 autocast when asked: the weights are cast once per call (autocast caches the casts of leaf
parameters for the length of the context) and the KV cache is held in bf16. Asked for the weights'
own precision instead, a flash-attn model decodes through SDPA (flash-attn refuses fp32).
"""

import contextlib
from collections.abc import Callable

import torch
from transformers import DynamicCache

from zhinao.rollout.engine import Generation, Sampling, cut_at_stop


class HFBatchedEngine:
    def __init__(
        self,
        *,
        stop_ids: list[int],
        pad_id: int,
        device: torch.device,
        dtype: torch.dtype | None,
        full_weights: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        """`dtype`: torch.bfloat16 to decode under bf16 autocast, None for the model's own precision.
        `full_weights`: opened around each decode loop, so that a sharded (FSDP2) model decodes from
        whole weights gathered once rather than per token (see Engine.full_weights)."""
        self.stop_ids, self.pad_id, self.device, self.dtype = list(stop_ids), pad_id, device, dtype
        self.full_weights = full_weights
        self.model: torch.nn.Module | None = None

    def sync(self, model: torch.nn.Module) -> None:
        # Generation runs on the training module itself: it always holds the updated weights.
        self.model = model

    def generate(self, prompts: list[list[int]], *, sampled: int, greedy: bool, sampling: Sampling) -> Generation:
        if self.model is None:
            raise RuntimeError("HFBatchedEngine.generate before sync(model)")
        rows = [p for p in prompts for _ in range(sampled)] + (list(prompts) if greedy else [])
        is_greedy = torch.arange(len(rows), device=self.device) >= len(prompts) * sampled
        out = self._decode(rows, is_greedy, sampling) if rows else []
        n = len(prompts) * sampled
        return Generation(sampled=out[:n], greedy=out[n:], tokens=sum(len(r) for r in out))

    @torch.no_grad()
    def _decode(self, rows: list[list[int]], is_greedy: torch.Tensor, sampling: Sampling) -> list[list[int]]:
        model, n, length = self.model, len(rows), max(len(r) for r in rows)
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # padding does not shift a row's positions
        stops = torch.tensor(self.stop_ids, device=self.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        picked = []
        was_training = model.training
        model.eval()
        try:
            with self.full_weights(), self._precision(model):
                cache = DynamicCache(config=model.config)
                logits = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]
                position = positions[:, -1:]
                for step in range(sampling.max_new_tokens):
                    token = pick(logits.float(), is_greedy, sampling).masked_fill(done, self.pad_id)
                    picked.append(token)
                    done |= torch.isin(token, stops)
                    if bool(done.all()) or step + 1 == sampling.max_new_tokens:
                        break
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    position = position + 1
                    logits = model(
                        input_ids=token[:, None],
                        attention_mask=mask,
                        position_ids=position,
                        cache=cache,
                        use_cache=True,
                    ).logits[:, -1]
        finally:
            model.train(was_training)
        table = torch.stack(picked, dim=1).tolist()
        return [cut_at_stop(row, self.stop_ids) for row in table]

    @contextlib.contextmanager
    def _precision(self, model: torch.nn.Module):
        if self.dtype is not None:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield
            return
        # Decoding in the weights' own precision, fp32 included, which flash-attn refuses: a model
        # that attends through flash-attn decodes through SDPA (the same attention) meanwhile.
        config, implementation = model.config, model.config._attn_implementation
        if not implementation.startswith("flash"):
            yield
            return
        config._attn_implementation = "sdpa"
        try:
            yield
        finally:
            config._attn_implementation = implementation


def pick(logits: torch.Tensor, is_greedy: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Next token per row: argmax on greedy rows, a draw at `temperature` (top-k truncated) on the rest."""
    best = logits.argmax(-1)
    if bool(is_greedy.all()):
        return best
    scaled = logits / sampling.temperature
    if sampling.top_k:
        kth = scaled.topk(min(sampling.top_k, scaled.size(-1)), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    drawn = torch.multinomial(scaled.softmax(-1), 1)[:, 0]
    return torch.where(is_greedy, best, drawn)
