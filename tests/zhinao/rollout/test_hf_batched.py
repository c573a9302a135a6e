"""The batched rollout engine on a real tiny 360Zhinao model: left-padded batches decode exactly as
one prompt at a time through Hugging Face `generate`, the three stop tokens end responses, and bf16
mode decodes in bf16."""

import pytest
import torch
from alignment_assets import tiny_tokenizer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from zhinao.model import build_config, build_model
from zhinao.rollout.engine import STOP_TOKENS, Sampling, stop_token_ids
from zhinao.rollout.hf_batched import HFBatchedEngine
from zhinao.tokenizer import EOD, IM_END, IM_START

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "a", "def add(a, b): return a + b"]
NEW = 10


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def model(tok):
    config = build_config("tiny", vocab_size=len(tok), max_position_embeddings=512, attention="sdpa")
    config.initializer_range = 0.3  # clear argmax margins: greedy paths do not hinge on rounding
    return build_model(config, seed=0).train()


def engine(tok, model, *, dtype=None, stops=None):
    e = HFBatchedEngine(
        stop_ids=stop_token_ids(tok) if stops is None else stops,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=dtype,
    )
    e.sync(model)
    return e


def prompts(tok):
    return [tok(t)["input_ids"] for t in TEXTS]  # lengths differ: the batch is left-padded


def hf_greedy(model, ids, stops, pad):
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=NEW,
        eos_token_id=stops,
        pad_token_id=pad,
        use_cache=True,
    )
    return out[0, len(ids) :].tolist()


def test_batched_greedy_rows_equal_per_prompt_generate_token_for_token(tok, model):
    ps = prompts(tok)
    assert len({len(p) for p in ps}) == len(ps)
    gen = engine(tok, model).generate(ps, sampled=2, greedy=True, sampling=Sampling(max_new_tokens=NEW))
    assert len(gen.sampled) == 2 * len(ps) and len(gen.greedy) == len(ps)
    expected = [hf_greedy(model, p, stop_token_ids(tok), tok.pad_token_id) for p in ps]
    assert gen.greedy == expected
    assert all(len(r) == NEW for r in expected)  # no early stop: every column was compared
    assert gen.tokens == sum(len(r) for r in gen.sampled + gen.greedy)
    assert model.training  # the engine restores the training mode


def test_sampled_rows_are_drawn_and_reproducible_from_the_seed(tok, model):
    e, ps = engine(tok, model), prompts(tok)
    torch.manual_seed(3)
    a = e.generate(ps, sampled=3, greedy=False, sampling=Sampling(max_new_tokens=NEW))
    torch.manual_seed(3)
    b = e.generate(ps, sampled=3, greedy=False, sampling=Sampling(max_new_tokens=NEW))
    assert a.sampled == b.sampled and a.greedy == []
    greedy = e.generate(ps, sampled=0, greedy=True, sampling=Sampling(max_new_tokens=NEW)).greedy
    assert any(a.sampled[3 * i + k] != greedy[i] for i in range(len(ps)) for k in range(3))


def test_top_k_one_sampling_is_greedy(tok, model):
    e, ps = engine(tok, model), prompts(tok)
    gen = e.generate(ps, sampled=1, greedy=True, sampling=Sampling(max_new_tokens=NEW, temperature=0.7, top_k=1))
    assert gen.sampled == gen.greedy


def test_the_report_s_three_stop_tokens():
    assert set(STOP_TOKENS) == {IM_END, EOD, IM_START}


@pytest.mark.parametrize("stop", [IM_END, EOD, IM_START])
def test_each_stop_token_ends_every_response_and_is_kept(tok, model, stop):
    sid = tok.convert_tokens_to_ids(stop)

    def favour(module, inputs, logits):  # the stop token becomes every row's overwhelming first choice
        logits[..., sid] += 1e4
        return logits

    model.lm_head.register_forward_hook(favour)
    gen = engine(tok, model).generate(prompts(tok), sampled=2, greedy=True, sampling=Sampling(max_new_tokens=NEW))
    assert all(r == [sid] for r in gen.sampled + gen.greedy)


def test_a_response_is_cut_after_its_first_stop_and_finished_rows_wait(tok, model):
    ps = prompts(tok)
    free = engine(tok, model, stops=[]).generate(ps, sampled=0, greedy=True, sampling=Sampling(max_new_tokens=NEW))
    stop = free.greedy[0][3]  # a token row 0 emits at its 4th step
    cut = engine(tok, model, stops=[stop]).generate(ps, sampled=0, greedy=True, sampling=Sampling(max_new_tokens=NEW))
    for full, short in zip(free.greedy, cut.greedy):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert short == full[:end]
    assert len(cut.greedy[0]) <= 4


def test_bf16_mode_decodes_in_bf16_and_leaves_the_fp32_weights(tok, model):
    seen = []
    hook = model.model.layers[0].self_attn.k_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    engine(tok, model, dtype=torch.bfloat16).generate(
        prompts(tok), sampled=1, greedy=True, sampling=Sampling(max_new_tokens=4)
    )
    assert seen and set(seen) == {torch.bfloat16}  # keys (and so the KV cache) in bf16, every step
    seen.clear()
    engine(tok, model).generate(prompts(tok), sampled=1, greedy=True, sampling=Sampling(max_new_tokens=4))
    hook.remove()
    assert set(seen) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp32_mode_decodes_a_flash_attention_model_through_sdpa(tok, model, monkeypatch):
    """flash-attn refuses fp32 (simulated here: flash-attn does not run on CPU): decoding in the
    weights' fp32, a flash model attends through SDPA, with the same tokens, and stays flash after."""
    ps, sampling = prompts(tok), Sampling(max_new_tokens=NEW)
    expected = engine(tok, model).generate(ps, sampled=0, greedy=True, sampling=sampling).greedy

    def flash(module, query, *args, **kwargs):
        raise ValueError(f"FlashAttention only support fp16 and bf16 data type, got {query.dtype}")

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flash_attention_2", flash)
    model.config._attn_implementation = "flash_attention_2"  # as loaded on a GPU with flash-attn
    with pytest.raises(ValueError, match="FlashAttention only support"):  # the simulation bites
        model(input_ids=torch.tensor([ps[0]]))
    assert engine(tok, model).generate(ps, sampled=0, greedy=True, sampling=sampling).greedy == expected
    assert model.config._attn_implementation == "flash_attention_2"


def test_generate_before_sync_is_refused(tok):
    e = HFBatchedEngine(stop_ids=[1], pad_id=0, device=torch.device("cpu"), dtype=None)
    with pytest.raises(RuntimeError, match="sync"):
        e.generate([[5]], sampled=1, greedy=False, sampling=Sampling(max_new_tokens=2))


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 5)])
def test_sampled_first_tokens_follow_the_policy_s_distribution(tok, model, temperature, top_k):
    prompt = prompts(tok)[1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1] / temperature
    if top_k:
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
    expected = logits.softmax(-1)
    n = 4000
    torch.manual_seed(0)
    gen = engine(tok, model, stops=[]).generate(
        [prompt], sampled=n, greedy=True, sampling=Sampling(max_new_tokens=1, temperature=temperature, top_k=top_k)
    )
    seen = torch.bincount(torch.tensor([r[0] for r in gen.sampled]), minlength=len(expected)).double() / n
    assert (seen - expected).abs().max() < 4 * (0.25 / n) ** 0.5  # 4 standard errors at worst (p = 1/2)
    if top_k:
        assert set(torch.nonzero(seen).flatten().tolist()) <= set(torch.nonzero(expected).flatten().tolist())
