"""In bf16 mode every stage hands bf16 query, key and value to attention, on every code path.

flash-attn takes only fp16/bf16, so on a GPU any forward that reaches attention in fp32 crashes.
A hook on the sdpa entry of transformers' attention table records the dtypes of every call and
the zhinao functions on the stack at that moment; each stage runs in-process on a tiny model for a
step with `precision: bf16` (frozen models and rollouts too), and the test asserts that every path
the table names reached attention and that every call, on any path, was bf16: a flash-attn that
refuses fp32 would have raised on none of them.

Each path runs under DDP (autocast over fp32 weights) and under FSDP2 (bf16 parameter copies from
the mixed-precision policy, no autocast) on a one-rank gloo group: the dtypes attention sees come
from the engine's precision handling, not from how many ranks share the shards. The stages with a
frozen reference or reward model also run with `referencePrecision: fp32` (held in fp32, computed
in bf16), the held-out reward-model scoring included.
"""

import dataclasses
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
from alignment_assets import run_stage, tiny_policy, write_jsonl
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from zhinao.artifacts import StageOutput
from zhinao.synthetic import all_pairs, preference_pairs, rl_prompts, sft_conversations
from zhinao_k8s.runner.local import free_port

BF16 = (torch.bfloat16,) * 3


@dataclass(frozen=True)
class Path:
    name: str
    kind: str
    inputs: tuple[str, ...]
    params: dict
    paths: tuple[str, ...]
    """zhinao functions (module.qualname) that must reach attention."""


TRAIN = "<the engine's train_step>"
TRAIN_STEP = {
    "ddp": "zhinao.training.engine.DDPEngine.train_step",
    "fsdp": "zhinao.training.fsdp_engine.FSDPEngine.train_step",
}
DECODE = "zhinao.rollout.hf_batched.HFBatchedEngine._decode"
LOGPROBS = "zhinao.alignment.rollout.logprobs_of"  # the policy's and the reference's
SCORE = "zhinao.alignment.scoring.Scorer.__call__"  # the reward model's
HELD_OUT = "zhinao.alignment.rollout.evaluate"
ONLINE = dict(maxSteps=1, microBatchSize=2, maxNewTokens=2, evalPrompts=2, evalSamples=1, rules={"arithmetic": 1.0})
FROZEN_BF16 = dict(referencePrecision="bf16", rolloutPrecision="bf16")
FROZEN_FP32 = dict(referencePrecision="fp32", rolloutPrecision="bf16")

PATHS = [
    Path(
        "pretrain",
        "pretrain",
        ("tokenizer", "corpus"),
        dict(seqLen=32, microBatchSize=2, maxSteps=1, warmupSteps=0),
        (TRAIN,),
    ),
    Path(
        "longctx",
        "longctx",
        ("model", "corpus"),
        dict(
            seqLen=128,
            maxSteps=1,
            warmupSteps=0,
            ropeTheta=1e6,
            needle={"lengths": [128], "numDepths": 1, "maxNewTokens": 2},
        ),
        (TRAIN, "zhinao.longctx.needle.evaluate"),
    ),
    Path(
        "sft",
        "sft",
        ("model", "data"),
        dict(maxLen=64, microBatchSize=2, maxSteps=1, evalFraction=0.1),
        (TRAIN, "zhinao.stages.sft.eval_loss"),
    ),
    Path(
        "reward",
        "reward",
        ("model", "preferences"),
        dict(maxLen=64, microBatchSize=2, maxSteps=1, evalFraction=0.2),
        (TRAIN, "zhinao.stages.reward.held_out_accuracy"),  # the first evaluation is before training
    ),
    Path(
        "remax",
        "rlhf",
        ("policy", "reward", "prompts"),
        dict(algorithm="remax", **ONLINE, **FROZEN_BF16),
        (DECODE, LOGPROBS, SCORE, HELD_OUT, "zhinao.alignment.remax.loss_fn.<locals>.fn"),
    ),
    Path(
        "ppo",
        "rlhf",
        ("policy", "reward", "prompts"),
        dict(algorithm="ppo", ppoEpochs=1, **ONLINE, **FROZEN_BF16),
        # rollout: old log-probs and values (actor-critic) and the reference; then the update
        (DECODE, "zhinao.alignment.ppo.rollout", LOGPROBS, SCORE, "zhinao.alignment.ppo.loss_fn.<locals>.fn"),
    ),
    Path(
        "dpo",
        "rlhf",
        ("policy", "preferences"),
        dict(algorithm="dpo", maxSteps=1, microBatchSize=2, maxLen=64, **FROZEN_BF16),
        ("zhinao.alignment.preference.dpo_loss_fn.<locals>.fn",),  # policy and reference
    ),
    Path(
        "orpo",
        "rlhf",
        ("policy", "preferences"),
        dict(algorithm="orpo", maxSteps=1, microBatchSize=2, maxLen=64, **FROZEN_BF16),
        ("zhinao.alignment.preference.orpo_loss_fn.<locals>.fn",),
    ),
]
# Held in fp32, computed in bf16: the reference's log-probs, DPO's reference and the held-out RM scoring.
PATHS += [
    dataclasses.replace(p, name=f"{p.name}-fp32-reference", params={**p.params, **FROZEN_FP32})
    for p in PATHS
    if p.name in ("remax", "ppo", "dpo")
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, stage_assets, longctx_base_model) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bf16")
    policy = tiny_policy(root / "policy")
    prefs = write_jsonl(root / "prefs", preference_pairs(all_pairs()[:10], per_pair=2))
    rm = f"file://{root}/rm"
    run_stage("reward", {"model": policy, "preferences": prefs}, rm, maxSteps=1, maxLen=64, microBatchSize=2)
    return {
        **stage_assets,
        "model": policy,
        "policy": policy,
        "reward": rm,
        "data": write_jsonl(root / "sft", sft_conversations(40, seed=1)),
        "preferences": prefs,
        "prompts": write_jsonl(root / "prompts", rl_prompts(all_pairs()[:10])),
        "longctx_model": longctx_base_model,
    }


@pytest.fixture
def attention_calls(monkeypatch) -> list[tuple[tuple[torch.dtype, ...], frozenset[str]]]:
    """(q, k, v dtypes, zhinao functions on the stack) of every sdpa attention call."""
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def recording(module, query, key, value, *args, **kwargs):
        on_stack, frame = set(), sys._getframe(1)
        while frame is not None:
            module_name = frame.f_globals.get("__name__", "")
            if module_name.startswith("zhinao."):
                on_stack.add(f"{module_name}.{frame.f_code.co_qualname}")
            frame = frame.f_back
        calls.append(((query.dtype, key.dtype, value.dtype), frozenset(on_stack)))
        return sdpa(module, query, key, value, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", recording)
    return calls


@pytest.fixture(params=["ddp", "fsdp"])
def engine(request) -> str:
    """The engine a stage trains with; FSDP2 needs a process group, here one of one rank."""
    if request.param == "fsdp":
        port = free_port()
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        request.addfinalizer(dist.destroy_process_group)
    return request.param


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_every_forward_of_the_stage_hands_bf16_to_attention(path, engine, inputs, attention_calls, tmp_path):
    given = {k: inputs["longctx_model" if (path.kind, k) == ("longctx", "model") else k] for k in path.inputs}
    params = dict(precision="bf16", attention="sdpa", engine=engine, **path.params)
    run_stage(path.kind, given, f"file://{tmp_path}/out", **params)

    assert attention_calls, "no forward reached the hooked attention"
    for name in (TRAIN_STEP[engine] if p == TRAIN else p for p in path.paths):
        assert any(name in stack for _, stack in attention_calls), f"{name} never reached attention"
    wrong = sorted({name for dtypes, stack in attention_calls if dtypes != BF16 for name in stack})
    assert not wrong, f"fp32 reached attention from {wrong}"
    if path.params.get("referencePrecision") == "fp32" and path.params["algorithm"] in ("remax", "ppo"):
        # Held as the policy's master weights are, the reference computes exactly as the policy does.
        assert StageOutput.at(f"file://{tmp_path}/out").step_records()[0]["kl"] == 0.0
