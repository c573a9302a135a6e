"""SFT, reward and RLHF (ReMax) with 2 ranks through the local PyTorchJob runner: Master + Worker
pods of one process each, gloo on CPU, a few steps on tiny data.

The chain sft -> rm -> rlhf runs once per module (each stage starts from the previous one's export,
as in the demo pipeline); SFT also runs on DeepSpeed ZeRO-2 and is compared with the chain's DDP run.
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

SFT = dict(lr=3e-3, maxLen=64, microBatchSize=8, maxSteps=6, warmupRatio=0.1, checkpointEvery=6)


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


@pytest.fixture(scope="module")
def chain(assets, tmp_path_factory):
    """(pipeline, {stage name: JobResult}) of sft -> rm -> rlhf, every stage on 2 ranks with DDP."""
    stages = [
        {"name": "sft", "kind": "sft", "inputs": {"model": assets["policy"], "data": assets["sft"]}, "params": SFT},
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
            ),
        },
    ]
    return run_on_two_ranks("chain", stages, tmp_path_factory.mktemp("chain"))


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


def test_sft_with_deepspeed_zero2_partitions_the_optimizer_and_trains_like_ddp(assets, chain, tmp_path):
    stage = {
        "name": "sft",
        "kind": "sft",
        "inputs": {"model": assets["policy"], "data": assets["sft"]},
        "params": {**SFT, "zeroStage": 2},
    }
    out = succeeded(run_on_two_ranks("zero2", [stage], tmp_path), "sft")
    zero2, _ = per_rank_steps(out, 6)
    manifest = json.loads(out.get_bytes("checkpoints/step-00000006/manifest.json"))
    assert len([p for p in manifest["parts"] if "optim_states" in p]) == 2, manifest["parts"]  # one partition per rank
    # Partitioning the optimizer saves memory and changes nothing else: same data, same init, same
    # updates, so the loss curve is the DDP run's up to float rounding.
    ddp = step_records(succeeded(chain, "sft"))
    assert [r["loss"] for r in zero2] == pytest.approx([r["loss"] for r in ddp], rel=1e-4)
    summary = json.loads(out.get_bytes("summary.json"))
    assert summary["loss_last"] < summary["loss_first"]
    model = AutoModelForCausalLM.from_pretrained(summary["hf"].removeprefix("file://"))
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight"))
