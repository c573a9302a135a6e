"""Ring-attention sequence parallelism equals single-process attention, forward and backward.

Two gloo ranks on CPU (torch.multiprocessing), fp32: the attention op alone, then a whole tiny
360Zhinao-shaped model (grouped K/V heads) trained through the per-rank shard loss.
"""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from zhinao.longctx.sequence_parallel import (
    IGNORE_INDEX,
    SequenceParallel,
    activate_sequence_parallel,
    init_sequence_parallel,
    layout,
    ring_attention,
    sequence_parallel_lm_loss,
    shard_batch,
)

TOL = 1e-5


def tiny_config(attn: str) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=5e7,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=attn,
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sp = init_sequence_parallel(world)
    result: dict[str, float] = {}

    # 1. The attention op: [batch, heads, T, head_dim], T split in two.
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(2, 4, 24, 8) for _ in range(4))
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = F.scaled_dot_product_attention(*ref, is_causal=True)
    ref_out.backward(dout)
    span = slice(rank * 12, (rank + 1) * 12)
    mine = [t[:, :, span].clone().requires_grad_() for t in (q, k, v)]
    out = ring_attention(*mine, sp=sp)
    out.backward(dout[:, :, span])
    result["attn_out"] = max_diff(out, ref_out[:, :, span])
    for name, a, b in zip("qkv", mine, ref):
        result[f"attn_grad_{name}"] = max_diff(a.grad, b.grad[:, :, span])

    # 2. A whole model: loss and every parameter gradient against the single-process model.
    torch.manual_seed(1)
    reference = Qwen2ForCausalLM(tiny_config("eager"))
    ids = torch.randint(0, 97, (2, 32))
    ref_loss = reference(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    ref_logits = reference(input_ids=ids).logits

    sharded = Qwen2ForCausalLM(tiny_config("eager"))
    sharded.load_state_dict(reference.state_dict())
    sharded.set_attn_implementation(activate_sequence_parallel(sp))
    loss = sequence_parallel_lm_loss(sharded, ids, sp)
    loss.backward()
    local_ids, positions, _ = shard_batch(ids, sp)
    logits = sharded(input_ids=local_ids, position_ids=positions).logits
    result["logits"] = max_diff(logits, ref_logits[:, rank * 16 : (rank + 1) * 16])
    summed = loss.detach().clone()
    dist.all_reduce(summed)
    result["loss"] = abs(summed.item() / world - ref_loss.item())
    grad_diff = 0.0
    for p, p_ref in zip(sharded.parameters(), reference.parameters()):
        g = p.grad.clone()
        dist.all_reduce(g)  # DDP would average over ranks; the sum over S ranks is S x the gradient
        grad_diff = max(grad_diff, max_diff(g / world, p_ref.grad))
    result["param_grads"] = grad_diff
    result["grad_scale"] = max(p.grad.abs().max().item() for p in reference.parameters())
    with open(f"{out_dir}/rank-{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process_attention_and_model_gradients(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        print(f"rank {rank}: max abs diffs {result}")
        assert result["grad_scale"] > 1e-3  # the gradients compared are not all zero
        for key, value in result.items():
            if key != "grad_scale":
                assert value < TOL, (rank, key, value)


def test_one_rank_ring_is_plain_causal_attention():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    sp = SequenceParallel(size=1, rank=0)
    assert torch.autograd.gradcheck(lambda a, b, c: ring_attention(a, b, c, sp=sp), (q, k, v), fast_mode=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert max_diff(ring_attention(q, k, v, sp=sp), expected) < 1e-12


@pytest.mark.parametrize(
    "rank, world, sp, expected",
    [
        (0, 4, 2, (0, 0, 2, 0)),
        (3, 4, 2, (1, 1, 2, 2)),
        (5, 8, 4, (1, 1, 2, 4)),
        (2, 4, 1, (0, 2, 4, 2)),
        (3, 4, 4, (3, 0, 1, 0)),
    ],
)
def test_layout_groups_consecutive_ranks(rank, world, sp, expected):
    assert layout(rank=rank, world_size=world, sp_size=sp) == expected


def test_layout_rejects_a_degree_that_does_not_divide_the_world():
    with pytest.raises(ValueError, match="must divide"):
        layout(rank=0, world_size=6, sp_size=4)


def test_shard_labels_cross_the_shard_boundary_and_positions_are_global():
    ids = torch.arange(12).reshape(1, 12)
    first, pos0, lab0 = shard_batch(ids, SequenceParallel(size=3, rank=0))
    last, pos2, lab2 = shard_batch(ids, SequenceParallel(size=3, rank=2))
    assert first.tolist() == [[0, 1, 2, 3]] and pos0.tolist() == [[0, 1, 2, 3]] and lab0.tolist() == [[1, 2, 3, 4]]
    assert last.tolist() == [[8, 9, 10, 11]] and pos2.tolist() == [[8, 9, 10, 11]]
    assert lab2.tolist() == [[9, 10, 11, IGNORE_INDEX]]


def test_one_rank_shard_loss_is_the_models_own_mean_loss():
    torch.manual_seed(4)
    model = Qwen2ForCausalLM(tiny_config("sdpa"))
    ids = torch.randint(0, 97, (3, 20))
    ours = sequence_parallel_lm_loss(model, ids, SequenceParallel(size=1, rank=0))
    assert abs(ours.item() - model(input_ids=ids, labels=ids).loss.item()) < 1e-6
