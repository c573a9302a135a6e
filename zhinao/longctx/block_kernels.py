"""Fused attention kernels for one ring block: output plus log-sum-exp forward, gradients backward.

The ring (zhinao.longctx.sequence_parallel) merges block results with their log-sum-exp, so each
block needs a kernel that returns it and, backward, accepts the final (merged) output and
log-sum-exp of the whole row. With those, a fused kernel's backward computes exactly this
block's share of dQ, dK, dV: P = exp(S - lse) and D = rowsum(dO * O) are per row, not per block.
No kernel here ever materializes a score matrix; memory is O(rows * head_dim) per call.

- CPU: PyTorch's flash-attention op for CPU (`aten::_scaled_dot_product_flash_attention_for_cpu`
  and its `_backward`), blocked over queries and keys, fp64/fp32/bf16 (log-sum-exp in fp32, or
  fp64 for fp64 inputs).
- CUDA: flash-attn 2 (`flash_attn.flash_attn_interface._flash_attn_forward/_backward`, the
  >= 2.6.3 signatures with window_size_left/right and softcap), bf16 or fp16, log-sum-exp fp32.
  Not run here (the machine this was written on has no GPU).

Tensors are [batch, heads, rows, head_dim]; log-sum-exp is [batch, heads, rows].
"""

from dataclasses import dataclass
from typing import Protocol

import torch


class BlockKernel(Protocol):
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, log-sum-exp) of softmax(q k^T * scale) v; causal: square block, the diagonal one."""
        ...

    def backward(
        self,
        dout: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        *,
        causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv) of this block, given the rows' final output and log-sum-exp."""
        ...


@dataclass(frozen=True)
class CpuFlashKernel:
    """PyTorch's CPU flash-attention op; supports fp64, which the exactness proofs use."""

    def forward(self, q, k, v, *, causal, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.contiguous(), q, k, v, out.contiguous(), lse.contiguous(), 0.0, causal, scale=scale
        )


@dataclass(frozen=True)
class FlashAttnKernel:
    """flash-attn 2 on CUDA. Its layout is [batch, rows, heads, head_dim]; lse [batch, heads, rows]."""

    def forward(self, q, k, v, *, causal, scale):
        from flash_attn.flash_attn_interface import _flash_attn_forward

        out, lse, _, _ = _flash_attn_forward(
            *(t.transpose(1, 2) for t in (q, k, v)),
            dropout_p=0.0,
            softmax_scale=scale,
            causal=causal,
            window_size_left=-1,
            window_size_right=-1,
            softcap=0.0,
            alibi_slopes=None,
            return_softmax=False,
        )
        return out.transpose(1, 2), lse

    def backward(self, dout, q, k, v, out, lse, *, causal, scale):
        from flash_attn.flash_attn_interface import _flash_attn_backward

        q, k, v, out, dout = (t.transpose(1, 2) for t in (q, k, v, out, dout))
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        _flash_attn_backward(
            dout,
            q,
            k,
            v,
            out,
            lse.contiguous(),
            dq,
            dk,
            dv,
            dropout_p=0.0,
            softmax_scale=scale,
            causal=causal,
            window_size_left=-1,
            window_size_right=-1,
            softcap=0.0,
            alibi_slopes=None,
            deterministic=True,  # bit-identical resume needs a deterministic backward
        )
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def kernel_for(device: torch.device) -> BlockKernel:
    """The fused kernel for tensors on `device`; a clear error where none is available."""
    if device.type == "cpu":
        return CpuFlashKernel()
    if device.type == "cuda":
        try:
            import flash_attn.flash_attn_interface  # noqa: F401
        except ImportError as err:
            raise RuntimeError("ring attention on CUDA needs flash-attn >= 2.6.3 (the trainer image ships it)") from err
        return FlashAttnKernel()
    raise RuntimeError(f"ring attention has no fused kernel for device {device.type!r}")
