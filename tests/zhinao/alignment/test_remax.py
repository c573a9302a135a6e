"""ReMax's rollout scores the sampled and the greedy row of every prompt in one batched pass each
of the policy, the reference and the reward model, with the values separate passes would give."""

import pytest
import torch
from alignment_assets import tiny_tokenizer

from zhinao.alignment import remax
from zhinao.alignment.models import load_reward_model
from zhinao.alignment.rollout import logprobs_of, sequence_batch, texts
from zhinao.alignment.scoring import Scorer
from zhinao.chat import ChatEncoder
from zhinao.config.rlhf import RLHFParams
from zhinao.losses import kl_shaped_return
from zhinao.model import build_config, build_model
from zhinao.synthetic import all_pairs, rl_prompts

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("remax")
    tok = tiny_tokenizer(root)
    config = build_config("tiny", vocab_size=len(tok), max_position_embeddings=512, attention="sdpa")
    config.pad_token_id = tok.pad_token_id
    build_model(config, seed=2).save_pretrained(root / "rm")
    policy, ref = build_model(config, seed=0).eval(), build_model(config, seed=1).eval()
    rm = load_reward_model(root / "rm", "sdpa", tok.pad_token_id).eval()
    params = RLHFParams(rules={"arithmetic": 1.0}, klCoef=0.1)
    enc = ChatEncoder(tok)
    prompts = [
        {**r, "_ids": enc.prompt([{"role": "user", "content": r["prompt"]}])} for r in rl_prompts(all_pairs()[:3])
    ]
    # Sampled and greedy responses of different lengths: the joint batch pads each row further.
    sampled = [[7, 8, 9, 10, 11], [12], [13, 14, 15]]
    greedy = [[20, 21], [22, 23, 24, 25, 26, 27, 28], [29]]
    return dict(
        tok=tok,
        policy=policy,
        ref=ref,
        rm=rm,
        params=params,
        scorer=Scorer(params, enc, rm, CPU),
        prompts=prompts,
        generated=(sampled, greedy),
    )


def calls(model: torch.nn.Module) -> list[int]:
    n = [0]
    model.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    return n


def separate(s: dict, responses: list[list[int]]) -> dict:
    """One kind of row alone, as the rollout scored it before."""
    batch = sequence_batch(s["prompts"], responses, s["tok"].pad_token_id, CPU)
    logp, mask = logprobs_of(s["policy"], batch)
    ref_logp, _ = logprobs_of(s["ref"], batch)
    score = s["scorer"](s["prompts"], texts(s["tok"], responses))
    return dict(batch=batch, score=score, ret=kl_shaped_return(score["score"], logp, ref_logp, mask, 0.1))


def test_both_rows_are_scored_in_one_pass_each_with_the_separate_pass_values(setup):
    s = setup
    counts = {name: calls(s[name]) for name in ("policy", "ref", "rm")}
    train, stats = remax.rollout(
        s["policy"], s["ref"], s["prompts"], s["generated"], s["scorer"], s["params"], s["tok"], CPU
    )
    assert {name: n[0] for name, n in counts.items()} == {"policy": 1, "ref": 1, "rm": 1}
    sample, greedy = separate(s, s["generated"][0]), separate(s, s["generated"][1])
    assert torch.allclose(train["ret"], sample["ret"], atol=1e-5) and torch.allclose(
        train["baseline"], greedy["ret"], atol=1e-5
    )
    assert not torch.allclose(train["ret"], train["baseline"])  # the two kinds of row are told apart
    for key in ("input_ids", "attention_mask", "labels"):  # the update trains on the sampled rows alone
        assert torch.equal(train[key], sample["batch"][key])
    assert stats["reward_mean"] == pytest.approx(sample["score"]["score"].mean().item(), abs=1e-5)
    assert stats["reward_greedy_mean"] == pytest.approx(greedy["score"]["score"].mean().item(), abs=1e-5)
    assert stats["reward_rm_mean"] == pytest.approx(sample["score"]["rm"].mean().item(), abs=1e-5)
    assert stats["advantage_mean"] == pytest.approx((sample["ret"] - greedy["ret"]).mean().item(), abs=1e-5)
