"""Sequence parallelism by ring attention: one causal sequence split across the ranks of a group.

The report trained its 32K/360K models with ring attention (EasyContext) after tensor parallelism
scaled poorly with length (section 3.1.3). Each of the S ranks of a sequence-parallel group holds
T/S tokens of the same sequences. Everything outside attention (embeddings, MLP, norms, lm_head,
loss) is per token and runs on the shard unchanged; RoPE needs each token's global position, so
the shard carries its tokens' global position ids.

Layout. `contiguous`: rank r holds chunk r of S. Causality then gives rank S-1 S blocks of work
and rank 0 one (about 56% efficiency at S = 8). `zigzag` (EasyContext's, the default): the
sequence is cut into 2S chunks and rank r holds chunks r and 2S-1-r, so every rank does the same
work at every ring step (see block_work).

Attention (exact, not approximate). K/V shards travel around the ring: at step s rank r holds the
shard of rank (r - s) mod S, sends it on to rank r+1 and receives the next from rank r-1 while it
computes. Each block is one call of a fused attention kernel (zhinao.longctx.block_kernels: CPU
flash attention, flash-attn on CUDA) that returns the block output and its log-sum-exp; blocks are
merged with  lse = logaddexp(lse, lse_b),  out = out * exp(lse_old - lse) + out_b * exp(lse_b - lse)
in fp32. No score matrix is materialized: memory per rank is O(T/S * head_dim).

Backward (`torch.autograd.Function`): the same ring again; each block calls the kernel's backward
with the rows' final output and log-sum-exp, which yields exactly that block's dQ, dK, dV. dK/dV
accumulate in fp32 while they travel around the ring with their K/V shard, and one last hop
brings each shard's gradient home to the rank that owns it.

Loss and gradient scaling. A rank's loss is  S * (sum of token losses on its shard) / N,  with N
the target count of its group's micro-batch. Then the sum over the group's ranks of their
parameter gradients is S times the gradient of the group's mean loss, and DDP's all-reduce mean
over all W = D * S ranks gives (1/D) * sum over data-parallel groups of their mean-loss gradients:
exactly data-parallel training on whole sequences. (EasyContext scales by num_processes / total
target tokens for the same reason.)

Device mesh. The job's W = D * S ranks form a 2-D mesh ("dp", "sp") of D data-parallel groups of
S consecutive ranks. The ring communicates on the "sp" dimension's process group (gloo on CPU, NCCL
on GPU), separate from the one DDP all-reduces or FSDP gathers on, so the ring's send/recv never
interleave with the engine's collectives. FSDP2 shards over "dp" x "sp" flattened (see
SequenceParallel.shard_mesh).
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from zhinao.longctx.block_kernels import BlockKernel, kernel_for

ATTENTION_NAME = "zhinao_ring"
IGNORE_INDEX = -100
Sharding = Literal["zigzag", "contiguous"]


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in its sequence-parallel group."""

    size: int
    rank: int
    """Rank inside the group (0..size-1): which shard of the sequence this process holds."""
    group: object | None = None
    """The process group of the S ranks (None when size is 1)."""
    dp_rank: int = 0
    dp_size: int = 1
    """Data-parallel coordinates: groups hold different sequences."""
    sharding: Sharding = "zigzag"
    """How the sequence is cut across the group (see shard_spans); zigzag balances causal work."""
    mesh: DeviceMesh | None = None
    """The job's ("dp", "sp") mesh (None in a single process)."""
    shard_mesh: DeviceMesh | None = None
    """The 1-D mesh FSDP2 shards parameters, gradients and optimizer state over: "dp" x "sp"
    flattened, i.e. every rank. The S ranks of a group train the same weights on different tokens
    of the same sequences, so sharding over "dp" alone would keep S identical copies of every shard
    (S x the per-GPU parameter, gradient and Adam memory), and the gradient must be reduced over
    "dp" x "sp" anyway: the group's gradient is the sum of its ranks' shard gradients. torchtitan
    shards over dp_shard x cp for the same reason. The cost is a wider all-gather per block, whose
    volume per rank is the same (one full block's parameters)."""

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % self.size

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % self.size


def layout(*, rank: int, world_size: int, sp_size: int) -> tuple[int, int, int]:
    """(sp_rank, dp_rank, dp_size): groups are consecutive ranks, the row-major order of the
    ("dp", "sp") mesh (on GPUs the S ranks of a group then share a node and its NVLink)."""
    if sp_size < 1 or world_size % sp_size:
        raise ValueError(f"sequenceParallel ({sp_size}) must divide the world size ({world_size})")
    return rank % sp_size, rank // sp_size, world_size // sp_size


def init_sequence_parallel(
    sp_size: int, *, sharding: Sharding = "zigzag", device_type: str = "cpu"
) -> SequenceParallel:
    """Build the ("dp", "sp") device mesh (a collective: every rank must call it) and return this
    rank's place in it. device_type: "cuda" for NCCL groups, "cpu" for gloo."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    sp_rank, dp_rank, dp_size = layout(rank=rank, world_size=world, sp_size=sp_size)
    if world == 1:
        return SequenceParallel(size=1, rank=0, sharding=sharding)
    mesh = init_device_mesh(device_type, (dp_size, sp_size), mesh_dim_names=("dp", "sp"))
    return SequenceParallel(
        size=sp_size,
        rank=sp_rank,
        group=mesh.get_group("sp") if sp_size > 1 else None,
        dp_rank=dp_rank,
        dp_size=dp_size,
        sharding=sharding,
        mesh=mesh,
        shard_mesh=mesh["dp", "sp"]._flatten("dp_sp"),
    )


# ------------------------------------------------------------------------------- shard layout


def shard_spans(seq_len: int, sp: SequenceParallel) -> list[range]:
    """The global token positions this rank holds, as ranges in the order the shard stores them.

    contiguous: chunk r of S equal chunks. zigzag: chunks r and 2S-1-r of 2S equal chunks, so that
    every rank holds one early and one late chunk and does the same causal work.
    """
    parts = sp.size * (2 if sp.sharding == "zigzag" else 1)
    if seq_len % parts:
        raise ValueError(f"sequence length {seq_len} is not divisible by {parts} ({sp.sharding} over {sp.size} ranks)")
    n = seq_len // parts
    chunks = [sp.rank] if sp.sharding == "contiguous" else [sp.rank, parts - 1 - sp.rank]
    return [range(c * n, (c + 1) * n) for c in chunks]


@dataclass(frozen=True)
class BlockWork:
    """What rank `rank` computes against the K/V shard of rank `src`: which of its query rows,
    which of the block's key rows, and whether the block is the causal diagonal."""

    rows: slice
    keys: slice
    causal: bool


def block_work(sp: SequenceParallel, src: int, shard_len: int) -> BlockWork | None:
    """None when every key of `src`'s shard lies in the future of every query of this rank's."""
    everything = slice(0, shard_len)
    if src == sp.rank:
        # zigzag: the two local chunks are in order (r < 2S-1-r), so causal over the shard is exact
        return BlockWork(everything, everything, causal=True)
    if sp.sharding == "contiguous":
        return BlockWork(everything, everything, causal=False) if src < sp.rank else None
    half = shard_len // 2
    if src < sp.rank:  # src's early chunk precedes both of ours; its late chunk follows both
        return BlockWork(everything, slice(0, half), causal=False)
    # src > rank: only our late chunk sees src's chunks, and it sees both of them whole
    return BlockWork(slice(half, shard_len), everything, causal=False)


# ------------------------------------------------------------------------------- ring primitives


def _ring_exchange(tensors: list[torch.Tensor], sp: SequenceParallel) -> tuple[list[torch.Tensor], list]:
    """Start sending `tensors` to the next rank and receiving the previous rank's into new buffers."""
    tensors = [t.contiguous() for t in tensors]  # transformers hands over transposed views
    received = [torch.empty_like(t) for t in tensors]
    ops = []
    for send, recv in zip(tensors, received):
        ops.append(dist.P2POp(dist.isend, send, group=sp.group, group_peer=sp.next_rank))
        ops.append(dist.P2POp(dist.irecv, recv, group=sp.group, group_peer=sp.prev_rank))
    return received, dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for req in requests:
        req.wait()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Merges and gradient sums run in fp32 (fp64 inputs stay fp64, for the exactness proofs)."""
    return torch.promote_types(dtype, torch.float32)


def _merge(out: torch.Tensor, lse: torch.Tensor, rows: slice, block_out: torch.Tensor, block_lse: torch.Tensor):
    """Fold one block's (output, log-sum-exp) into the running result of `rows`, in place."""
    old = lse[:, :, rows]
    merged = torch.logaddexp(old, block_lse)
    out[:, :, rows] = out[:, :, rows] * torch.exp(old - merged).unsqueeze(-1) + block_out * torch.exp(
        block_lse - merged
    ).unsqueeze(-1)
    lse[:, :, rows] = merged


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, sp: SequenceParallel, kernel: BlockKernel):
        acc = _acc_dtype(q.dtype)
        n = q.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            out = torch.zeros(q.shape, dtype=acc, device=q.device)
            lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
            block = [k, v]
            for step in range(sp.size):
                pending = _ring_exchange(block, sp) if step < sp.size - 1 else None
                work = block_work(sp, (sp.rank - step) % sp.size, n)
                if work is not None:
                    block_out, block_lse = kernel.forward(
                        q[:, :, work.rows],
                        block[0][:, :, work.keys],
                        block[1][:, :, work.keys],
                        causal=work.causal,
                        scale=scale,
                    )
                    _merge(out, lse, work.rows, block_out.to(acc), block_lse.to(acc))
                if pending is not None:
                    _wait(pending[1])
                    block = pending[0]
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.sp, ctx.kernel = scale, sp, kernel
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        scale, sp, kernel = ctx.scale, ctx.sp, ctx.kernel
        acc = _acc_dtype(q.dtype)
        n = q.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            dout = grad_out.to(q.dtype).contiguous()
            dq = torch.zeros(q.shape, dtype=acc, device=q.device)
            block = [k, v]
            # The gradient of a K/V block travels with it and gathers every rank's share on the way.
            grads = torch.zeros((2, *k.shape), dtype=acc, device=q.device)
            for step in range(sp.size):
                pending = _ring_exchange(block, sp) if step < sp.size - 1 else None
                work = block_work(sp, (sp.rank - step) % sp.size, n)
                if work is not None:
                    rows, keys = work.rows, work.keys
                    dq_b, dk_b, dv_b = kernel.backward(
                        dout[:, :, rows],
                        q[:, :, rows],
                        block[0][:, :, keys],
                        block[1][:, :, keys],
                        out[:, :, rows],
                        lse[:, :, rows],
                        causal=work.causal,
                        scale=scale,
                    )
                    dq[:, :, rows] += dq_b
                    grads[0][:, :, keys] += dk_b
                    grads[1][:, :, keys] += dv_b
                if sp.size > 1:
                    # After the last step the block is the next rank's own: this hop brings its gradient home.
                    (grads,), requests = _ring_exchange([grads], sp)
                    _wait(requests)
                if pending is not None:
                    _wait(pending[1])
                    block = pending[0]
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sp: SequenceParallel,
    scale: float | None = None,
    kernel: BlockKernel | None = None,
) -> torch.Tensor:
    """Causal attention of this rank's query shard over the whole sequence's keys/values.

    q, k, v: [batch, heads, T/S, head_dim], the shard of rank sp.rank in sp.sharding's layout
    (same head count: repeat grouped K/V heads first). Returns [batch, heads, T/S, head_dim] in
    q's dtype; differentiable. k and v are cast to q's dtype (autocast may leave them apart).
    kernel: the block kernel; default the fused one for q's device (bench/ wraps it with a timer).
    """
    if q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if sp.sharding == "zigzag" and q.shape[2] % 2:
        raise ValueError(f"a zigzag shard holds two equal chunks, got {q.shape[2]} rows")
    kernel = kernel or kernel_for(q.device)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _RingAttention.apply(q, k.to(q.dtype), v.to(q.dtype), scale, sp, kernel)


# --------------------------------------------------------------------- transformers integration

_active: SequenceParallel | None = None


@dataclass
class DecodeState:
    """Set by sequence-parallel generation (zhinao.longctx.sp_generate) while it decodes: the number
    of cached keys each rank holds from the ring prefill. Tokens after the prefill are cached on
    every rank, but counted only on rank 0, so that each key enters the softmax once."""

    prefill_keys: int | None = None


decode_state = DecodeState()


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sp: SequenceParallel, scale: float):
    """Attention of new query rows over the KV cache spread across the group (every key is in the
    past of a decoded token, so nothing is masked): each rank attends over its own keys, the
    (output, log-sum-exp) pairs are all-gathered, and the log-sum-exp merge gives every rank the
    same result. q: [batch, heads, new, head_dim]; k, v: this rank's cache."""
    if decode_state.prefill_keys is None:
        raise RuntimeError("ring attention got a KV cache outside sequence-parallel generation")
    keys = k.shape[2] if sp.rank == 0 else decode_state.prefill_keys
    out, lse = kernel_for(q.device).forward(q, k[:, :, :keys], v[:, :, :keys], causal=False, scale=scale)
    acc = _acc_dtype(q.dtype)
    outs = [torch.empty(out.shape, dtype=acc, device=q.device) for _ in range(sp.size)]
    lses = [torch.empty(lse.shape, dtype=acc, device=q.device) for _ in range(sp.size)]
    dist.all_gather(outs, out.to(acc).contiguous(), group=sp.group)
    dist.all_gather(lses, lse.to(acc).contiguous(), group=sp.group)
    lse_all = torch.stack(lses)
    weights = torch.exp(lse_all - torch.logsumexp(lse_all, dim=0)).unsqueeze(-1)
    return (weights * torch.stack(outs)).sum(0).to(q.dtype)


def ring_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **_):
    """transformers attention-interface function (query/key/value [batch, heads, seq, head_dim],
    RoPE already applied); returns ([batch, seq, heads, head_dim], None) like the built-ins.
    Training and prefill (as many keys as queries) go around the ring; decoding with a cache
    (more keys than queries) merges every rank's cached keys (decode_attention)."""
    if _active is None:
        raise RuntimeError(f"attention {ATTENTION_NAME!r} used without activate_sequence_parallel()")
    if attention_mask is not None:
        raise ValueError("ring attention supports packed causal sequences only (no padding mask)")
    if dropout:
        raise ValueError("ring attention does not implement attention dropout")
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep).to(query.dtype), _repeat_kv(value, n_rep).to(query.dtype)
    if key.shape[2] != query.shape[2]:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out = decode_attention(query, key, value, sp=_active, scale=scale)
    else:
        out = ring_attention(query, key, value, sp=_active, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def activate_sequence_parallel(sp: SequenceParallel) -> str:
    """Register the ring attention with transformers for `sp`; returns the attn_implementation name."""
    global _active
    from transformers import AttentionInterface

    _active = sp
    AttentionInterface.register(ATTENTION_NAME, ring_attention_forward)
    return ATTENTION_NAME


def deactivate_sequence_parallel() -> None:
    """Forget the group registered for the ring: it holds the run's process groups, which must be
    freed before the process exits (zhinao.training.process_group)."""
    global _active
    _active = None


# --------------------------------------------------------------------------- data and loss


def shard_batch(input_ids: torch.Tensor, sp: SequenceParallel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, global position ids, next-token labels) of this rank's shard of [batch, T] sequences.

    Labels are shifted over the whole sequence before slicing, so a chunk's last token is trained
    to predict the next chunk's first; the sequence's final token has no target (IGNORE_INDEX).
    Position ids are the tokens' global positions, in the shard's (possibly zigzag) order.
    """
    spans = shard_spans(input_ids.shape[1], sp)
    index = torch.cat([torch.arange(r.start, r.stop, device=input_ids.device) for r in spans])
    labels = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], IGNORE_INDEX)], dim=1)
    return input_ids[:, index], index.expand(input_ids.shape[0], -1), labels[:, index]


def sequence_parallel_lm_loss(model, input_ids: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """This rank's share of the causal-LM loss of [batch, T] sequences: S * shard loss sum / targets.

    The values summed over the group's ranks equal S times the mean loss over all targets; see the
    module docstring for why this is the right scaling under DDP and FSDP. The shard's labels are
    already its tokens' next tokens (`shift_labels`, as transformers names them), so the model's
    own loss, the engine's chunked one included (no logits of the whole shard at once), gives the
    mean over the shard's targets.
    """
    ids, positions, labels = shard_batch(input_ids, sp)
    mean = model(input_ids=ids, position_ids=positions, labels=labels, shift_labels=labels).loss
    targets = input_ids.shape[0] * (input_ids.shape[1] - 1)
    return mean * (labels != IGNORE_INDEX).sum() * sp.size / targets
