"""Sequence parallelism by ring attention: one causal sequence split across the ranks of a group.

The report trained its 32K/360K models with ring attention (EasyContext) after tensor parallelism
scaled poorly with length (section 3.1.3). Here each of the S ranks of a sequence-parallel group
holds one contiguous shard of T/S tokens of the same sequences. Everything outside attention
(embeddings, MLP, norms, lm_head, loss) is per token and runs on the shard unchanged; RoPE needs
each token's global position, so the shard's position ids are offset by rank * T/S.

Attention (exact, not approximate). Rank r owns queries Q_r and keys/values K_r, V_r. The K/V
blocks travel around the ring: at step s rank r holds the block of rank (r - s) mod S, sends it on
to rank r+1 and receives the next from rank r-1 while it computes. Causality makes blocks from
later ranks irrelevant (skipped) and the diagonal block triangular. Partial results are merged
with the log-sum-exp rule: out = sum_b exp(lse_b - lse) * out_b, lse = logaddexp over blocks.
All block arithmetic is fp32.

Backward (explicit, `torch.autograd.Function`). From the saved output O and log-sum-exp L,
P = exp(Q K^T * scale - L) is recomputed per block; with D = rowsum(dO * O):
    dV_b += P^T dO,  dS = P * (dO V_b^T - D),  dQ += dS K_b * scale,  dK_b += dS^T Q * scale.
dK_b/dV_b accumulate while they travel around the ring with their K/V block, and one last hop
brings each block's gradient home to the rank that owns it.

Loss and gradient scaling. A rank's loss is  S * (sum of token losses on its shard) / N,  with N
the target count of its group's micro-batch. Then the sum over the group's ranks of their
parameter gradients is S times the gradient of the group's mean loss, and DDP's all-reduce mean
over all W = D * S ranks gives (1/D) * sum over data-parallel groups of their mean-loss gradients:
exactly data-parallel training on whole sequences. (EasyContext scales by num_processes / total
target tokens for the same reason.)

Communication uses its own process group (gloo on CPU, NCCL on GPU), separate from the one DDP
all-reduces on, so the ring's send/recv never interleave with DDP's bucketed all-reduce.

Not done here: the zigzag shard layout that balances causal work across ranks (with contiguous
shards rank S-1 computes S blocks and rank 0 one), and flash-attn block kernels on GPU (the block
math is plain matmuls, O((T/S)^2) memory per block).
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

ATTENTION_NAME = "zhinao_ring"
IGNORE_INDEX = -100


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

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % self.size

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % self.size


def layout(*, rank: int, world_size: int, sp_size: int) -> tuple[int, int, int, int]:
    """(sp_rank, dp_rank, dp_size, first global rank of the group): groups are consecutive ranks
    (on GPUs the S ranks of a group then share a node and its NVLink)."""
    if sp_size < 1 or world_size % sp_size:
        raise ValueError(f"sequenceParallel ({sp_size}) must divide the world size ({world_size})")
    return rank % sp_size, rank // sp_size, world_size // sp_size, rank - rank % sp_size


def init_sequence_parallel(sp_size: int) -> SequenceParallel:
    """Create the sequence-parallel groups (a collective: every rank must call it) and return this rank's."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    sp_rank, dp_rank, dp_size, first = layout(rank=rank, world_size=world, sp_size=sp_size)
    if sp_size == 1:
        return SequenceParallel(size=1, rank=0, group=None, dp_rank=dp_rank, dp_size=dp_size)
    mine = None
    for start in range(0, world, sp_size):  # new_group is collective over the whole world
        group = dist.new_group(list(range(start, start + sp_size)))
        if start == first:
            mine = group
    return SequenceParallel(size=sp_size, rank=sp_rank, group=mine, dp_rank=dp_rank, dp_size=dp_size)


# ------------------------------------------------------------------------------- ring primitives


def _ring_exchange(tensor: torch.Tensor, sp: SequenceParallel) -> tuple[torch.Tensor, list]:
    """Start sending `tensor` to the next rank and receiving the previous rank's into a new buffer."""
    recv = torch.empty_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor.contiguous(), group=sp.group, group_peer=sp.next_rank),
        dist.P2POp(dist.irecv, recv, group=sp.group, group_peer=sp.prev_rank),
    ]
    return recv, dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for req in requests:
        req.wait()


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Blocks are computed in fp32 (fp64 inputs stay fp64, for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _block_scores(q: torch.Tensor, k: torch.Tensor, scale: float, diagonal: bool) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if diagonal:
        n = scores.shape[-1]
        upper = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(upper, float("-inf"))
    return scores


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, sp: SequenceParallel):
        with torch.autocast(q.device.type, enabled=False):
            qf = _acc(q)
            out = torch.zeros_like(qf)
            lse = torch.full(qf.shape[:-1], float("-inf"), dtype=qf.dtype, device=q.device)
            block = torch.stack([_acc(k), _acc(v)])
            for step in range(sp.size):
                src = (sp.rank - step) % sp.size
                pending = _ring_exchange(block, sp) if step < sp.size - 1 else None
                if src <= sp.rank:  # later ranks hold only future tokens
                    scores = _block_scores(qf, block[0], scale, diagonal=src == sp.rank)
                    block_lse = torch.logsumexp(scores, dim=-1)
                    block_out = torch.matmul(torch.exp(scores - block_lse.unsqueeze(-1)), block[1])
                    merged = torch.logaddexp(lse, block_lse)
                    out = out * torch.exp(lse - merged).unsqueeze(-1) + block_out * torch.exp(
                        block_lse - merged
                    ).unsqueeze(-1)
                    lse = merged
                if pending is not None:
                    _wait(pending[1])
                    block = pending[0]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.sp = scale, sp
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        scale, sp = ctx.scale, ctx.sp
        with torch.autocast(q.device.type, enabled=False):
            qf, dout = _acc(q), _acc(grad_out)
            delta = (dout * out).sum(-1, keepdim=True)
            dq = torch.zeros_like(qf)
            # [k, v, dk, dv] of one block travel together; dk/dv accumulate on every rank they visit.
            block = torch.stack([_acc(k), _acc(v), torch.zeros_like(qf), torch.zeros_like(qf)])
            for step in range(sp.size):
                src = (sp.rank - step) % sp.size
                if src <= sp.rank:
                    kb, vb = block[0], block[1]
                    probs = torch.exp(_block_scores(qf, kb, scale, diagonal=src == sp.rank) - lse.unsqueeze(-1))
                    block[3] += torch.matmul(probs.transpose(-1, -2), dout)
                    dscores = probs * (torch.matmul(dout, vb.transpose(-1, -2)) - delta)
                    dq += torch.matmul(dscores, kb) * scale
                    block[2] += torch.matmul(dscores.transpose(-1, -2), qf) * scale
                if sp.size > 1:
                    # After the last step the block is the next rank's: send its gradient home.
                    payload = block if step < sp.size - 1 else block[2:].contiguous()
                    recv, requests = _ring_exchange(payload, sp)
                    _wait(requests)
                    block = recv
            dk, dv = block[-2], block[-1]  # [k, v, dk, dv] when S is 1, else the [dk, dv] that came home
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def ring_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sp: SequenceParallel, scale: float | None = None
) -> torch.Tensor:
    """Causal attention of this rank's query shard over the whole sequence's keys/values.

    q, k, v: [batch, heads, T/S, head_dim], the shard of rank sp.rank (same head count: repeat
    grouped K/V heads first). Returns [batch, heads, T/S, head_dim]; differentiable.
    """
    if q.shape != k.shape or k.shape != v.shape:
        raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    return _RingAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale, sp)


# --------------------------------------------------------------------- transformers integration

_active: SequenceParallel | None = None


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def ring_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **_):
    """transformers attention-interface function (query/key/value [batch, heads, seq, head_dim],
    RoPE already applied); returns ([batch, seq, heads, head_dim], None) like the built-ins."""
    if _active is None:
        raise RuntimeError(f"attention {ATTENTION_NAME!r} used without activate_sequence_parallel()")
    if attention_mask is not None:
        raise ValueError("ring attention supports packed causal sequences only (no padding mask)")
    if dropout:
        raise ValueError("ring attention does not implement attention dropout")
    n_rep = query.shape[1] // key.shape[1]
    out = ring_attention(query, _repeat_kv(key, n_rep), _repeat_kv(value, n_rep), sp=_active, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def activate_sequence_parallel(sp: SequenceParallel) -> str:
    """Register the ring attention with transformers for `sp`; returns the attn_implementation name."""
    global _active
    from transformers import AttentionInterface

    _active = sp
    AttentionInterface.register(ATTENTION_NAME, ring_attention_forward)
    return ATTENTION_NAME


# --------------------------------------------------------------------------- data and loss


def shard_range(seq_len: int, sp: SequenceParallel) -> range:
    if seq_len % sp.size:
        raise ValueError(f"sequence length {seq_len} is not divisible by sequenceParallel {sp.size}")
    n = seq_len // sp.size
    return range(sp.rank * n, (sp.rank + 1) * n)


def shard_batch(input_ids: torch.Tensor, sp: SequenceParallel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, global position ids, next-token labels) of this rank's shard of [batch, T] sequences.

    Labels are shifted over the whole sequence before slicing, so a shard's last token is trained
    to predict the next shard's first; the sequence's final token has no target (IGNORE_INDEX).
    """
    span = shard_range(input_ids.shape[1], sp)
    labels = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], IGNORE_INDEX)], dim=1)
    positions = torch.arange(span.start, span.stop, device=input_ids.device).expand(input_ids.shape[0], -1)
    return input_ids[:, span.start : span.stop], positions, labels[:, span.start : span.stop]


def sequence_parallel_lm_loss(model, input_ids: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """This rank's share of the causal-LM loss of [batch, T] sequences: S * shard loss sum / targets.

    The values summed over the group's ranks equal S times the mean loss over all targets; see the
    module docstring for why this is the right scaling under DDP.
    """
    ids, positions, labels = shard_batch(input_ids, sp)
    logits = model(input_ids=ids, position_ids=positions).logits
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    targets = input_ids.shape[0] * (input_ids.shape[1] - 1)
    return total * sp.size / targets
