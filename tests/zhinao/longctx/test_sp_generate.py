"""Sequence-parallel greedy generation (ring prefill, distributed KV cache) decodes exactly the tokens
single-process generation does: 2 gloo ranks, a tiny 360Zhinao-shaped model, a prompt length that
leaves tokens over after the ring prefill, both layouts; and the needle evaluation run across the
two ranks gives the single-process answers."""

import json

import pytest
import torch
from gloo_ranks import spawn
from test_needle import ALPHABET, CharTokenizer
from test_sequence_parallel import tiny_config
from transformers import Qwen2ForCausalLM

from zhinao.longctx import sp_generate
from zhinao.longctx.needle import evaluate
from zhinao.longctx.sequence_parallel import activate_sequence_parallel, init_sequence_parallel

NEW_TOKENS = 8
PROMPT_LEN = 45  # 45 = 11 * 4 + 1: one token over after the ring prefill on 2 ranks


def _worker(rank: int, world: int, out_dir: str, sharding: str) -> None:
    torch.set_num_threads(1)
    sp = init_sequence_parallel(world, sharding=sharding)
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(tiny_config("sdpa")).eval()
    prompts = torch.randint(3, 97, (2, PROMPT_LEN))
    expected = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=[0],
        pad_token_id=0,
    )[:, PROMPT_LEN:]
    ring = activate_sequence_parallel(sp)
    model.set_attn_implementation(ring)
    got = sp_generate.generate(model, prompts, sp, max_new_tokens=NEW_TOKENS, stop_ids=[0])
    # A stop id ends a row early; the rows that stopped are padded with it.
    first = int(expected[0, 2])
    stopped = sp_generate.generate(model, prompts, sp, max_new_tokens=NEW_TOKENS, stop_ids=[first])
    result = {"expected": expected.tolist(), "got": got.tolist(), "stopped": stopped.tolist(), "first": first}
    # A prompt the ring prefills whole (no token over), batch of 3.
    whole = torch.randint(3, 97, (3, 44))
    model.set_attn_implementation("sdpa")
    result["whole_expected"] = model.generate(
        input_ids=whole, attention_mask=torch.ones_like(whole), max_new_tokens=4, do_sample=False, eos_token_id=[0]
    )[:, 44:].tolist()
    model.set_attn_implementation(ring)
    result["whole"] = sp_generate.generate(model, whole, sp, max_new_tokens=4, stop_ids=[0]).tolist()

    # The needle grid, batched, once across the ranks and once on one process (fp32: exact tokens).
    tok = CharTokenizer(ALPHABET + "".join(chr(0x4E00 + i) for i in range(97)))  # covers the model's ids
    cells = dict(lengths=[250, 333], depths=[0.0, 50.0, 100.0], preset="kv", max_new_tokens=6, precision="fp32")
    haystack = "The grass is green. The sky is blue! Water is wet. "
    result["needle_sp"] = evaluate(model, tok, haystack, sp=sp, **cells)["cells"]
    bf16 = evaluate(model, tok, haystack, sp=sp, **{**cells, "precision": "bf16"})  # bf16 kernels, bf16 cache
    result["needle_bf16_cells"] = len(bf16["cells"])
    model.set_attn_implementation("sdpa")
    result["needle_local"] = evaluate(model, tok, haystack, **cells)["cells"]
    with open(f"{out_dir}/rank-{rank}.json", "w") as f:
        json.dump(result, f)


@pytest.mark.parametrize("sharding", ["zigzag", "contiguous"])
def test_two_rank_generation_decodes_the_single_process_tokens(tmp_path, sharding):
    spawn(_worker, 2, str(tmp_path), sharding)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert result["got"] == result["expected"], rank
        assert result["whole"] == result["whole_expected"], rank
        assert len(set(result["expected"][0])) > 1  # the model does not just repeat one token
        assert result["stopped"][0][:3] == result["expected"][0][:3]
        assert all(t == result["first"] for t in result["stopped"][0][3:])
        assert result["needle_sp"] == result["needle_local"] and len(result["needle_sp"]) == 6
        assert result["needle_bf16_cells"] == 6
