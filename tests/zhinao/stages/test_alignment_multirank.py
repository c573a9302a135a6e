"""SFT, reward and RLHF (ReMax, PPO, DPO, ORPO) with 2 ranks through the local PyTorchJob runner:
Master + Worker pods of one process each, gloo on CPU, a few steps on tiny data.

The chain sft -> rm -> rlhf (ReMax) and, from the same SFT and RM exports, ppo, dpo and orpo runs
once per module under DDP and once under FSDP2, and each stage is compared across the two; SFT also
runs on DeepSpeed ZeRO-2/3 and is compared with the chain's DDP run.
"""

import json
from pathlib import Path

import pytest
import torch
from alignment_assets import tiny_policy, write_jsonl
from stage_runs import run, stage_output, step_records
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from zhinao.data.sft_tools import dedup
from zhinao.synthetic import all_pairs, preference_pairs, rl_prompts, sft_conversations

pytestmark = pytest.mark.slow

SFT = dict(lr=3e-3, maxLen=64, microBatchSize=8, maxSteps=6, warmupRatio=0.1, checkpointEvery=6, evalFraction=0.1)


# PPO, DPO and ORPO: a small lr keeps the two engines' rounding differences from growing over the steps.
HELD_OUT_ROLLOUTS = dict(
    lr=1e-3,
    microBatchSize=4,
    maxNewTokens=2,
    evalPrompts=8,
    evalSamples=2,
    rules={"code_switch": 1.0},
)


def with_copies(data: list[dict]) -> list[dict]:
    for at in (10, 51, 90, 133, 170):
        data.insert(at, dict(data[0]))
    return data + [{"messages": [{"role": "user", "content": "no answer"}]}]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multirank")
    return {
        "policy": tiny_policy(root / "policy"),
        # 5 copies of one conversation and an invalid one, spread over both ranks' lines (one file: every
        # other line each): curation must find the copies across ranks, as one rank would
        "sft": write_jsonl(root / "sft", with_copies(sft_conversations(200, seed=1))),
        "preferences": write_jsonl(root / "prefs", preference_pairs(all_pairs()[:40], per_pair=2)),
        "prompts": write_jsonl(root / "prompts", rl_prompts(all_pairs())),
    }


def run_on_two_ranks(name: str, stages: list[dict], workdir: Path) -> tuple:
    """(pipeline, {stage name: JobResult}) of a pipeline whose stages each run on two pods of one rank."""
    for stage in stages:  # a failure fails the test instead of being retried
        stage.update(replicas=2, nprocPerNode=1, backoffLimit=0)
    spec = json.dumps(
        {
            "apiVersion": "zhinao.ai/v1alpha1",
            "kind": "TrainingPipeline",
            "metadata": {"name": name},
            "spec": {"storage": {"uri": f"file://{workdir}/store"}, "stages": stages},
        }
    )
    pipeline, result = run(spec, workdir / "w")
    return pipeline, dict(result.stages)


def chain_stages(assets: dict, **common) -> list[dict]:
    """sft -> rm -> rlhf (ReMax), each with `common` added to its params."""
    return [
        {
            "name": "sft",
            "kind": "sft",
            "inputs": {"model": assets["policy"], "data": assets["sft"]},
            "params": {**SFT, **common},
        },
        {
            "name": "rm",
            "kind": "reward",
            "inputs": {"model": "stage://sft", "preferences": assets["preferences"]},
            "params": dict(
                lr=3e-3,
                maxLen=64,
                microBatchSize=8,
                maxSteps=6,
                warmupRatio=0.1,
                checkpointEvery=6,
                task="arithmetic",
                evalFraction=0.2,
                **common,
            ),
        },
        {
            "name": "rlhf",
            "kind": "rlhf",
            "inputs": {"policy": "stage://sft", "reward": "stage://rm", "prompts": assets["prompts"]},
            # A prompt without letters or CJK counts as Chinese, so the code-switch rule scores every Latin word
            # of a response: a dense reward that an untrained policy improves on within a few steps.
            "params": dict(
                algorithm="remax",
                lr=3e-2,
                maxSteps=16,
                microBatchSize=8,
                maxNewTokens=2,
                checkpointEvery=16,
                evalPrompts=16,
                evalSamples=4,
                rules={"code_switch": 1.0},
                klCoef=0.1,
                **common,
            ),
        },
        {
            "name": "ppo",  # policy, reference, reward model and a critic (initialised from the RM)
            "kind": "rlhf",
            "inputs": {"policy": "stage://sft", "reward": "stage://rm", "prompts": assets["prompts"]},
            "params": dict(
                algorithm="ppo",
                ppoEpochs=2,
                criticLr=1e-3,
                maxSteps=3,
                checkpointEvery=3,
                **HELD_OUT_ROLLOUTS,
                **common,
            ),
        },
        *(
            {
                "name": algorithm,
                "kind": "rlhf",
                # evaluated on held-out prompts, generated by the policy and scored by the rule and
                # the (sharded, under FSDP2) reward model
                "inputs": {
                    "policy": "stage://sft",
                    "reward": "stage://rm",
                    "preferences": assets["preferences"],
                    "evalPrompts": assets["prompts"],
                },
                "params": dict(
                    algorithm=algorithm,
                    maxLen=64,
                    maxSteps=4,
                    checkpointEvery=4,
                    **HELD_OUT_ROLLOUTS,
                    **common,
                ),
            }
            for algorithm in ("dpo", "orpo")
        ),
    ]


@pytest.fixture(scope="module")
def chain(assets, tmp_path_factory):
    """(pipeline, {stage name: JobResult}) of sft -> rm -> rlhf, every stage on 2 ranks with DDP."""
    return run_on_two_ranks("chain", chain_stages(assets), tmp_path_factory.mktemp("chain"))


def succeeded(pipeline_run: tuple, stage: str):
    """The stage's output, once its job is known to have succeeded at the first attempt."""
    pipeline, jobs = pipeline_run
    assert stage in jobs, f"an earlier stage failed: {[(n, j.reason) for n, j in jobs.items()]}"
    job = jobs[stage]
    assert job.succeeded and job.restarts == 0, (job.log_dir / "master-0.log").read_text()[-3000:]
    return stage_output(pipeline, stage)


def per_rank_steps(store, n_steps: int) -> tuple[list[dict], list[dict]]:
    """Both ranks' step records, after checking each rank logged every step once."""
    ranks = step_records(store, 0), step_records(store, 1)
    for rank, records in enumerate(ranks):
        assert [r["step"] for r in records] == list(range(1, n_steps + 1)), rank
    return ranks


def test_sft_with_ddp_trains_each_rank_on_its_own_rows_and_exports(chain):
    out = succeeded(chain, "sft")
    rank0, rank1 = per_rank_steps(out, 6)
    # The logged loss is the mean over both ranks; the token counts are each rank's own rows.
    assert [r["loss"] for r in rank0] == [r["loss"] for r in rank1]
    assert [(r["tokens"], r["target_tokens"]) for r in rank0] != [(r["tokens"], r["target_tokens"]) for r in rank1]
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["steps"] == 6 and summary["loss_last"] < summary["loss_first"]
    kept, duplicates = dedup(with_copies(sft_conversations(200, seed=1))[:-1])  # what one process finds
    assert summary["data"]["duplicates"] == duplicates >= 5 and summary["data"]["invalid"] == 1
    assert summary["data"]["records_used"] == len(kept) and summary["data"]["records_in"] == 206
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert model.config.model_type == "qwen2"


def test_reward_with_ddp_trains_each_rank_on_its_own_pairs_and_exports_a_classifier(chain):
    out = succeeded(chain, "rm")
    rank0, rank1 = per_rank_steps(out, 6)
    # Batch accuracy and margin are each rank's own pairs' (equal weights, so equal pairs would give equal values).
    assert [(r["rm_accuracy"], r["reward_margin"]) for r in rank0] != [
        (r["rm_accuracy"], r["reward_margin"]) for r in rank1
    ]
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["held_out_accuracy"] > summary["held_out_accuracy_before"]
    rm = AutoModelForSequenceClassification.from_pretrained(summary["hf"].removeprefix("file://"))
    assert rm.config.num_labels == 1
    assert rm(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 1)


def test_remax_with_ddp_rolls_out_each_rank_on_its_own_prompts_and_exports_the_policy(chain):
    out = succeeded(chain, "rlhf")
    rank0, rank1 = per_rank_steps(out, 16)
    # Both ranks start from the reference policy, and keep equal weights; the greedy rollout is a
    # function of the weights and the prompts, so its reward differs only if the prompts do.
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-5) for r in (rank0[0], rank1[0]))
    assert [r["reward_greedy_mean"] for r in rank0] != [r["reward_greedy_mean"] for r in rank1]
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["algorithm"] == "remax" and summary["steps"] == 16
    # On held-out prompts, sampled with the same seed before and after training, the rule's reward rose.
    assert summary["eval_after"]["sampled"]["rule"] > summary["eval_before"]["sampled"]["rule"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert model.config.model_type == "qwen2"


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_sft_with_deepspeed_zero_partitions_the_optimizer_and_trains_like_ddp(assets, chain, tmp_path, zero_stage):
    stage = {
        "name": "sft",
        "kind": "sft",
        "inputs": {"model": assets["policy"], "data": assets["sft"]},
        "params": {**SFT, "zeroStage": zero_stage},  # ZeRO-3: the policy loads into its partitions (zero.Init)
    }
    out = succeeded(run_on_two_ranks(f"zero{zero_stage}", [stage], tmp_path), "sft")
    zero, _ = per_rank_steps(out, 6)
    manifest = json.loads(out.get_bytes("checkpoints/step-00000006/manifest.json"))
    assert len([p for p in manifest["parts"] if "optim_states" in p]) == 2, manifest["parts"]  # one partition per rank
    # Partitioning the optimizer saves memory and changes nothing else: same data, same init, same
    # updates, so the loss curve is the DDP run's up to float rounding.
    ddp = step_records(succeeded(chain, "sft"))
    assert [r["loss"] for r in zero] == pytest.approx([r["loss"] for r in ddp], rel=1e-4)
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight"))


@pytest.fixture(scope="module")
def fsdp_chain(assets, tmp_path_factory):
    """The chain again with every stage on FSDP2: blocks sharded across the two ranks, held-out
    evaluation and rollouts through the sharded model, ReMax's reference and RM sharded too."""
    return run_on_two_ranks("fsdp", chain_stages(assets, engine="fsdp"), tmp_path_factory.mktemp("fsdp"))


def figures(value, name: str = "") -> dict[str, float]:
    """A summary's figure, or nested dict of them ({"greedy": {"rule": ...}}), as {"greedy.rule": ...}."""
    if not isinstance(value, dict):
        return {name: value}
    return {k: v for key, inner in value.items() for k, v in figures(inner, f"{name}.{key}").items()}


HF_CLASS = {"rm": AutoModelForSequenceClassification}
"""The stages' export classes, AutoModelForCausalLM where not named."""
HELD_OUT = {
    "sft": ("eval_loss_before", "eval_loss_after"),
    "rm": ("held_out_accuracy_before", "held_out_loss"),
    **{name: ("eval_before", "eval_after") for name in ("ppo", "dpo", "orpo")},
}


@pytest.mark.parametrize(("stage", "steps"), [("sft", 6), ("rm", 6), ("rlhf", 16), ("ppo", 3), ("dpo", 4), ("orpo", 4)])
def test_fsdp_trains_each_alignment_stage_like_ddp_and_exports_the_same_model(chain, fsdp_chain, stage, steps):
    fsdp_out, ddp_out = succeeded(fsdp_chain, stage), succeeded(chain, stage)
    fsdp, _ = per_rank_steps(fsdp_out, steps)
    ddp = step_records(ddp_out)
    # FSDP2 averages the same gradients DDP does (fp32 on CPU): the same run up to float rounding.
    # ReMax at lr 3e-2 amplifies that rounding step by step (and a drawn token may flip), so its
    # comparison is tight for the first 3 steps and loose up to step 8 (one evaluation, 8 rollouts in).
    losses, ddp_losses = [r["loss"] for r in fsdp], [r["loss"] for r in ddp]
    tight = 3 if stage == "rlhf" else steps
    assert losses[:tight] == pytest.approx(ddp_losses[:tight], rel=1e-4, abs=1e-6)
    if stage == "rlhf":
        assert losses[:8] == pytest.approx(ddp_losses[:8], rel=5e-2, abs=1e-3)
    summary, ddp_summary = json.loads(fsdp_out.get_bytes("summary.json")), json.loads(ddp_out.get_bytes("summary.json"))
    exported = (
        HF_CLASS.get(stage, AutoModelForCausalLM).from_pretrained(summary["hf"].removeprefix("file://")).state_dict()
    )
    expected = (
        HF_CLASS.get(stage, AutoModelForCausalLM)
        .from_pretrained(ddp_summary["hf"].removeprefix("file://"))
        .state_dict()
    )
    assert exported.keys() == expected.keys()
    if stage == "rlhf":  # held-out rollouts generated from the gathered weights, scored by the sharded RM
        assert figures(summary["eval_before"]) == pytest.approx(figures(ddp_summary["eval_before"]), rel=1e-4)
        assert summary["eval_after"]["sampled"]["n"] == 16 * 4
        return
    for key in HELD_OUT[stage]:  # evaluated through the sharded model on both ranks
        assert summary[key] is not None, key
        assert figures(summary[key]) == pytest.approx(figures(ddp_summary[key]), rel=1e-4), key
    for name, value in expected.items():
        torch.testing.assert_close(exported[name], value, rtol=1e-3, atol=1e-4, msg=name)
