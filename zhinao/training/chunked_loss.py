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
    """Sum of -log p(label) over labelled tokens / their count, gradients computed chunk by chunk.

    Every whole-tensor pass on CPU ends at torch's thread barrier, so the work is in as few passes
    as it can be: per chunk two matmuls and the weight gradient's, one fused log-softmax, its exp
    and the one-hot subtraction in place. Masking and the 1/count of the mean are left to backward,
    which applies them with the incoming gradient in one pass over each (small) result.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, compute_dtype: torch.dtype):
        mask = labels != IGNORE_INDEX
        count = mask.sum().clamp(min=1).to(torch.float32)
        # Unlabelled rows zeroed: they then add nothing to the weight's gradient (backward zeroes
        # their hidden-state gradient); their logits are never read.
        h_all = hidden.to(compute_dtype).masked_fill(~mask.unsqueeze(1), 0)
        w = weight.to(compute_dtype)
        targets = labels.masked_fill(~mask, 0).unsqueeze(1)
        minus_one = torch.full(targets.shape, -1.0, device=hidden.device)
        target_log_probs = torch.empty(targets.shape, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=compute_dtype, device=hidden.device)
        # Accumulated in the matmul's dtype, like the lm_head's own weight gradient would be.
        grad_weight = torch.empty(weight.shape, dtype=compute_dtype, device=weight.device)
        for start in range(0, hidden.size(0), chunk):
            rows = slice(start, start + chunk)
            h = h_all[rows]
            # One fused pass (max, sum of exponentials, write), not logsumexp's chain of passes.
            log_probs = torch.log_softmax(h @ w.t(), dim=-1, dtype=torch.float32)
            torch.gather(log_probs, 1, targets[rows], out=target_log_probs[rows])
            # d(-log p(label))/d(logits) = softmax - onehot, built in the log-probs' own buffer, so a
            # chunk costs one fp32 (chunk, V) tensor (and its compute-dtype copy).
            grad_logits = log_probs.exp_().scatter_add_(1, targets[rows], minus_one[rows]).to(compute_dtype)
            del log_probs
            torch.mm(grad_logits, w, out=grad_hidden[rows])
            if start == 0:
                torch.mm(grad_logits.t(), h, out=grad_weight)
            else:
                grad_weight.addmm_(grad_logits.t(), h)
        ctx.mask, ctx.count = mask, count
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return -(target_log_probs.squeeze(1) * mask).sum() / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        # In fp32: the sums were accumulated unscaled, in the compute dtype.
        factor = grad_output.float() / ctx.count
        return (
            torch.mul(grad_hidden, ctx.mask.unsqueeze(1) * factor).to(hidden_dtype),
            torch.mul(grad_weight, factor).to(weight_dtype),
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
