"""Next-token cross-entropy straight from hidden states, without the whole logits tensor.

At 4 x 4096 tokens and a 158,464-token vocabulary the fp32 logits of one micro-batch are about
10 GB, and autograd would keep them (and their softmax) until backward. Here the lm_head matmul
runs over chunks of tokens; each chunk's loss and gradients (softmax - one-hot) are computed in the
forward pass and the chunk's logits are freed at once, so at most one chunk of logits is alive and
backward only scales the stored gradients. On CUDA with Liger installed, Liger's fused Triton
kernel does the same in one launch per chunk.
"""

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from zhinao.chat import IGNORE_INDEX

DEFAULT_CHUNK = 1024
"""Tokens per chunk: 1024 x 158,464 fp32 logits are 650 MB, small next to a 7B model's state."""


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Sum of -log p(label) over labelled tokens / their count, gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, compute_dtype: torch.dtype):
        mask = labels != IGNORE_INDEX
        count = mask.sum().clamp(min=1).to(torch.float32)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden)
        # Accumulated in the matmul's dtype, like the lm_head's own weight gradient would be.
        grad_weight = torch.zeros(weight.shape, dtype=compute_dtype, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            h = hidden[start : start + chunk].to(compute_dtype)
            y, m = labels[start : start + chunk], mask[start : start + chunk]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            safe = y.masked_fill(~m, 0).unsqueeze(1)
            total = total + ((lse - torch.gather(logits, 1, safe).squeeze(1)) * m).sum()
            # d(loss)/d(logits) = (softmax - onehot) / count on labelled rows, 0 elsewhere; built in
            # the logits' own buffer, so a chunk costs one fp32 (chunk, V) tensor and its bf16 copy.
            logits.sub_(lse.unsqueeze(1)).exp_()
            logits.scatter_add_(1, safe, -torch.ones_like(safe, dtype=logits.dtype))
            grad_logits = logits.mul_(m.unsqueeze(1) / count).to(compute_dtype)
            del logits
            grad_hidden[start : start + chunk] = (grad_logits @ w).to(hidden.dtype)
            grad_weight.addmm_(grad_logits.t(), h)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype),
            grad_weight * grad_output.to(grad_weight.dtype),
            None,
            None,
            None,
        )


def _liger_loss(hidden: torch.Tensor):
    """Liger's fused linear cross-entropy class on CUDA when installed (optional: Triton, CUDA only)."""
    if not hidden.is_cuda:
        return None
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `labels` (IGNORE_INDEX rows skipped).

    hidden (N, H), weight (V, H), labels (N,): already aligned (the caller shifts). The matmul runs
    in the autocast dtype when autocast is on (as the lm_head Linear would), the softmax in fp32.
    """
    liger = _liger_loss(hidden)
    if liger is not None:
        return liger(ignore_index=IGNORE_INDEX)(weight, hidden, labels)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden, weight, labels, chunk, dtype)


class ChunkedLossLM(torch.nn.Module):
    """A causal LM whose forward computes the loss with `chunked_cross_entropy` when given labels.

    Calls without `labels` go to the wrapped model unchanged (generation, log-probs of responses),
    so stages can hand this module to the engine in place of the model. Engines shard and wrap
    this module, so the lm_head weight is gathered by the same forward that uses it.
    """

    def __init__(self, lm: torch.nn.Module, *, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.lm, self.chunk = lm, chunk

    def forward(self, input_ids=None, labels=None, shift_labels=None, **kwargs):
        """`shift_labels`, as in transformers' causal-LM loss: labels already aligned with the
        tokens (each its token's next one), used unshifted (a sequence-parallel shard's)."""
        if labels is None:
            return self.lm(input_ids=input_ids, **kwargs)
        hidden = self.lm.model(input_ids=input_ids, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
        h = hidden.reshape(-1, hidden.size(-1))
        loss = chunked_cross_entropy(h, self.lm.lm_head.weight, shift_labels.reshape(-1), chunk=self.chunk)
        return CausalLMOutputWithPast(loss=loss)
