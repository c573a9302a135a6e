"""Ring-attention sequence parallelism equals single-process attention, forward and backward.

Gloo ranks on CPU (torch.multiprocessing): the attention op alone on 2 and 4 ranks, contiguous and
zigzag, in fp64, fp32 and bf16; then a whole tiny 360Zhinao-shaped model (grouped K/V heads)
trained through the per-rank shard loss, both layouts.
"""

import json

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gloo_ranks import spawn
from transformers import Qwen2Config, Qwen2ForCausalLM

from zhinao.longctx.sequence_parallel import (
    IGNORE_INDEX,
    BlockWork,
    SequenceParallel,
    activate_sequence_parallel,
    block_work,
    init_sequence_parallel,
    layout,
    ring_attention,
    sequence_parallel_lm_loss,
    shard_batch,
    shard_spans,
)

TOL = 1e-5
# Max abs error of the ring against single-process attention on unit-variance inputs. fp64 is
# the proof of exactness; fp32/bf16 bound the rounding of the kernels and the fp32 merge. bf16's
# reference is computed in fp64 from the same bf16 inputs: the bound is bf16 output rounding
# (2^-8 relative) plus the kernel's bf16 probabilities.
ATTN_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}
SHARDINGS = ("contiguous", "zigzag")


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


def _shard_index(seq_len: int, sp: SequenceParallel) -> torch.Tensor:
    return torch.cat([torch.arange(r.start, r.stop) for r in shard_spans(seq_len, sp)])


def _attention_worker(rank: int, world: int, out_dir: str) -> None:
    """Max abs diffs of output and dq/dk/dv on this rank's shard, per layout and dtype."""
    torch.set_num_threads(1)
    result: dict[str, float] = {}
    for sharding in SHARDINGS:
        sp = init_sequence_parallel(world, sharding=sharding)
        for dtype in ATTN_TOL:
            torch.manual_seed(0)
            q, k, v, dout = (torch.randn(2, 3, 8 * world, 16, dtype=torch.float64).to(dtype) for _ in range(4))
            ref = [t.double().clone().requires_grad_() for t in (q, k, v)]
            ref_out = F.scaled_dot_product_attention(*ref, is_causal=True)
            ref_out.backward(dout.double())
            index = _shard_index(q.shape[2], sp)
            # [batch, seq, heads, dim] storage seen as [batch, heads, seq, dim], as transformers hands it over
            mine = [t[:, :, index].transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)]
            out = ring_attention(*mine, sp=sp)
            out.backward(dout[:, :, index])
            key = f"{sharding}/{str(dtype).removeprefix('torch.')}"
            result[f"{key}/out"] = max_diff(out.double(), ref_out[:, :, index])
            for name, a, b in zip("qkv", mine, ref):
                assert a.grad.dtype == dtype
                result[f"{key}/d{name}"] = max_diff(a.grad.double(), b.grad[:, :, index])
    with open(f"{out_dir}/rank-{rank}.json", "w") as f:
        json.dump(result, f)


def _model_worker(rank: int, world: int, out_dir: str, sharding: str) -> None:
    torch.set_num_threads(1)
    sp = init_sequence_parallel(world, sharding=sharding)
    result: dict[str, float] = {}

    # A whole model: logits, loss and every parameter gradient against the single-process model.
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
    result["logits"] = max_diff(logits, ref_logits[:, _shard_index(ids.shape[1], sp)])
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


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_ring_attention_matches_single_process_attention_forward_and_backward(tmp_path, world):
    spawn(_attention_worker, world, str(tmp_path))
    for rank in range(world):
        result = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        print(f"rank {rank}: max abs diffs {result}")
        assert len(result) == len(SHARDINGS) * len(ATTN_TOL) * 4
        for key, value in result.items():
            dtype = getattr(torch, key.split("/")[1])
            assert value < ATTN_TOL[dtype], (rank, key, value)


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_gloo_ranks_match_single_process_model_gradients(tmp_path, sharding):
    spawn(_model_worker, 2, str(tmp_path), sharding)
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
        (0, 4, 2, (0, 0, 2)),
        (3, 4, 2, (1, 1, 2)),
        (5, 8, 4, (1, 1, 2)),
        (2, 4, 1, (0, 2, 4)),
        (3, 4, 4, (3, 0, 1)),
    ],
)
def test_layout_groups_consecutive_ranks(rank, world, sp, expected):
    assert layout(rank=rank, world_size=world, sp_size=sp) == expected


def test_layout_rejects_a_degree_that_does_not_divide_the_world():
    with pytest.raises(ValueError, match="must divide"):
        layout(rank=0, world_size=6, sp_size=4)


def test_shard_labels_cross_the_shard_boundary_and_positions_are_global():
    ids = torch.arange(12).reshape(1, 12)
    first, pos0, lab0 = shard_batch(ids, SequenceParallel(size=3, rank=0, sharding="contiguous"))
    last, pos2, lab2 = shard_batch(ids, SequenceParallel(size=3, rank=2, sharding="contiguous"))
    assert first.tolist() == [[0, 1, 2, 3]] and pos0.tolist() == [[0, 1, 2, 3]] and lab0.tolist() == [[1, 2, 3, 4]]
    assert last.tolist() == [[8, 9, 10, 11]] and pos2.tolist() == [[8, 9, 10, 11]]
    assert lab2.tolist() == [[9, 10, 11, IGNORE_INDEX]]


def test_zigzag_shard_holds_an_early_and_a_late_chunk_with_their_positions_and_labels():
    ids = torch.arange(100, 112).reshape(1, 12)  # 6 chunks of 2 over 3 ranks
    ids0, pos0, lab0 = shard_batch(ids, SequenceParallel(size=3, rank=0))
    ids2, pos2, lab2 = shard_batch(ids, SequenceParallel(size=3, rank=2))
    assert pos0.tolist() == [[0, 1, 10, 11]] and ids0.tolist() == [[100, 101, 110, 111]]
    assert lab0.tolist() == [[101, 102, 111, IGNORE_INDEX]]
    assert pos2.tolist() == [[4, 5, 6, 7]] and lab2.tolist() == [[105, 106, 107, 108]]
    with pytest.raises(ValueError, match="not divisible by 6"):
        shard_batch(torch.zeros(1, 9, dtype=torch.long), SequenceParallel(size=3, rank=0))


def _work_units(sp: SequenceParallel, n: int) -> float:
    """Query-key pairs one rank computes over a whole ring pass (a causal block counts half)."""
    total = 0.0
    for src in range(sp.size):
        work = block_work(sp, src, n)
        if work is not None:
            pairs = len(range(n)[work.rows]) * len(range(n)[work.keys])
            total += pairs / 2 if work.causal else pairs
    return total


@pytest.mark.parametrize("size", [2, 4, 8])
def test_zigzag_gives_every_rank_the_same_causal_work_and_contiguous_does_not(size):
    zigzag = [_work_units(SequenceParallel(size=size, rank=r), 64) for r in range(size)]
    contiguous = [_work_units(SequenceParallel(size=size, rank=r, sharding="contiguous"), 64) for r in range(size)]
    assert len(set(zigzag)) == 1
    assert contiguous == [64 * 64 * (r + 0.5) for r in range(size)]
    # both cover the causal triangle of the whole sequence (T^2 / 2 pairs, counting the diagonal half)
    assert sum(zigzag) == sum(contiguous) == (64 * size) ** 2 / 2


def test_block_work_skips_only_blocks_entirely_in_the_future():
    sp = SequenceParallel(size=4, rank=1)  # holds chunks 1 and 6 of 8
    assert block_work(sp, 1, 8) == BlockWork(slice(0, 8), slice(0, 8), causal=True)
    assert block_work(sp, 0, 8) == BlockWork(slice(0, 8), slice(0, 4), causal=False)  # chunk 0 only
    assert block_work(sp, 3, 8) == BlockWork(slice(4, 8), slice(0, 8), causal=False)  # chunks 3, 4 for chunk 6
    assert block_work(SequenceParallel(size=4, rank=1, sharding="contiguous"), 2, 8) is None


def test_one_rank_shard_loss_is_the_models_own_mean_loss():
    torch.manual_seed(4)
    model = Qwen2ForCausalLM(tiny_config("sdpa"))
    ids = torch.randint(0, 97, (3, 20))
    ours = sequence_parallel_lm_loss(model, ids, SequenceParallel(size=1, rank=0))
    assert abs(ours.item() - model(input_ids=ids, labels=ids).loss.item()) < 1e-6
