"""The RLHF stage on real tiny models (ReMax, PPO, DPO, ORPO), its resume, and the whole demo chain
pretrain -> SFT -> RM -> RLHF through the local PyTorchJob runner."""

import json
import math
from pathlib import Path

import pytest
import torch
from alignment_assets import Crash, assert_same_weights, crash_on_step, hf_weights, run_stage, tiny_policy, write_jsonl
from stage_runs import stage_output

from zhinao.storage import open_store
from zhinao.synthetic import all_pairs, preference_pairs, rl_prompts, write_demo_alignment_data
from zhinao.training.hf_export import read_export
from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.cli.local import headline
from zhinao_k8s.runner.pipeline import run_training_pipeline


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    torch.set_num_threads(1)
    policy = tiny_policy(root / "policy")
    prefs = write_jsonl(root / "prefs", preference_pairs(all_pairs()[:20], per_pair=2))
    run_stage(
        "reward",
        {"model": policy, "preferences": prefs},
        f"file://{root}/rm",
        maxSteps=2,
        maxLen=64,
        microBatchSize=8,
        lr=1e-3,
    )
    return {
        "policy": policy,
        "reward": f"file://{root}/rm",
        "prompts": write_jsonl(root / "prompts", rl_prompts(all_pairs()[:40])),
        "preferences": prefs,
    }


ONLINE = dict(
    lr=1e-3,
    maxSteps=4,
    microBatchSize=4,
    maxNewTokens=3,
    checkpointEvery=2,
    evalPrompts=4,
    evalSamples=1,
    rules={"arithmetic": 1.0},
    klCoef=0.1,
)


def test_remax_resumes_mid_run_to_identical_weights_and_reports(tmp_path, assets, monkeypatch):
    inputs = {k: assets[k] for k in ("policy", "reward", "prompts")}
    # An adaptive beta that moves fast: the resumed run must pick it up from the checkpoint.
    params = {**ONLINE, "klTarget": 0.5, "klHorizon": 4}
    ref = f"file://{tmp_path}/ref"
    run_stage("rlhf", inputs, ref, **params)
    out = f"file://{tmp_path}/crashed"
    with monkeypatch.context() as m:
        crash_on_step(m, 4)  # after the step-2 checkpoint
        with pytest.raises(Crash):
            run_stage("rlhf", inputs, out, **params)
    run_stage("rlhf", inputs, out, **params)
    assert_same_weights(hf_weights(ref), hf_weights(out))
    a, b = hf_weights(ref), hf_weights(f"file://{assets['policy'].removeprefix('file://')}")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it did train
    store = open_store(out)
    s = json.loads(store.get_bytes("summary.json"))
    assert s["algorithm"] == "remax" and s["eval_prompts"] == 4
    assert set(s["eval_before"]) == {"greedy", "sampled"} and "rule" in s["eval_after"]["sampled"]
    steps = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    steps = [r for r in steps if r.get("event") == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all({"reward_mean", "reward_greedy_mean", "kl", "reward_rm_mean"} <= r.keys() for r in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert steps[0]["kl_coef"] == 0.1 and steps[1]["kl_coef"] == pytest.approx(0.08)  # KL 0 < target: -20%
    assert all(r["generation_seconds"] > 0 for r in steps)
    assert store.exists("report/rlhf.png") and store.exists("report/rlhf.md")
    # The reward-hacking check: both rewards in the summary and a plain verdict on held-out prompts.
    g = s["reward_guard"]
    after = s["eval_after"]["sampled"]
    assert g["where"] == "held-out prompts, 4 sampled responses each" and after["n"] == 4
    assert g["rm_after"] == after["rm"] and g["checked_after"] == after["rule"]
    assert g["checked_noise"] == pytest.approx(
        ((s["eval_before"]["sampled"]["rule_std"] ** 2 + after["rule_std"] ** 2) / 4) ** 0.5
    )
    rose = g["checked_after"] - g["checked_before"] > 2 * g["checked_noise"]
    assert g["checked_rose_with_rm"] == (g["rm_after"] > g["rm_before"] and rose)
    assert g["sentence"] in store.get_bytes("report/rlhf.md").decode()
    assert {"reward_rm_first", "reward_rm_last", "reward_rule_first", "reward_rule_last"} <= s.keys()
    assert s["stopped_early"] is None


def test_kl_stop_ends_training_and_a_rerun_does_not_continue(tmp_path, assets):
    inputs = {k: assets[k] for k in ("policy", "reward", "prompts")}
    out = f"file://{tmp_path}/stopped"
    params = {**ONLINE, "maxSteps": 6, "klStop": 1e-3, "evalPrompts": 0}
    run_stage("rlhf", inputs, out, **params)
    store = open_store(out)
    s = json.loads(store.get_bytes("summary.json"))
    stop = s["stopped_early"]
    assert stop is not None and 1 < stop["step"] < 6 and stop["kl"] > 1e-3 and s["steps"] == stop["step"]
    assert "first training step" in s["reward_guard"]["where"]
    weights = hf_weights(out)
    run_stage("rlhf", inputs, out, **params)  # resumes from the stop's checkpoint: nothing left to do
    assert_same_weights(weights, hf_weights(out))
    steps = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    assert max(r["step"] for r in steps if r.get("event") == "step") == stop["step"]


def test_held_out_prompts_leave_training_and_leaving_none_is_a_clear_error(tmp_path, assets):
    prompts = rl_prompts(all_pairs()[:40])
    inputs = {
        "policy": assets["policy"],
        "reward": assets["reward"],
        "prompts": write_jsonl(tmp_path / "few", prompts[:3]),
    }
    with pytest.raises(SystemExit, match="3 of inputs.prompts are the held-out evalPrompts=4 .* lower evalPrompts"):
        run_stage("rlhf", inputs, f"file://{tmp_path}/none-left", **{**ONLINE, "maxSteps": 1})
    out = f"file://{tmp_path}/held"
    run_stage("rlhf", {**inputs, "prompts": assets["prompts"]}, out, **{**ONLINE, "maxSteps": 1})
    index = json.loads(open_store(out).get_bytes("records/train/index.json"))
    assert index["counts"]["held_out"] == 4 and index["records"] == len(prompts) - 4


def test_remax_scored_by_the_reward_model_alone_trains(tmp_path, assets):
    # The defaults: rmWeight 1 and no rules (a rule-less score once came out as an integer tensor).
    out = f"file://{tmp_path}/rm-only"
    params = {**ONLINE, "rules": {}, "maxSteps": 2, "referencePrecision": "bf16"}  # bf16 reference and RM
    run_stage("rlhf", {k: assets[k] for k in ("policy", "reward", "prompts")}, out, **params)
    steps = [json.loads(l) for l in open_store(out).get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    steps = [r for r in steps if r.get("event") == "step"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["reward_rule_mean"] == 0.0 for r in steps)
    assert all(r["reward_mean"] == pytest.approx(r["reward_rm_mean"]) for r in steps)


def test_ppo_trains_policy_and_critic_and_exports_the_policy_only(tmp_path, assets):
    out = f"file://{tmp_path}/ppo"
    run_stage(
        "rlhf",
        {k: assets[k] for k in ("policy", "reward", "prompts")},
        out,
        **{**ONLINE, "algorithm": "ppo", "maxSteps": 2, "ppoEpochs": 2},
    )
    store = open_store(out)
    exported = hf_weights(out)
    assert not any(k.startswith(("critic", "policy.")) for k in exported)
    assert exported.keys() == hf_weights(assets["policy"]).keys()
    ckpt = store.get_bytes("checkpoints/latest").decode().strip()
    local = tmp_path / "model.pt"
    store.get_file(f"checkpoints/{ckpt}/model.pt", local)
    state = torch.load(local)
    assert any(k.startswith("critic.score") for k in state)  # the critic is resumable
    steps = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    assert all("value_mean" in r for r in steps if r.get("event") == "step")


@pytest.mark.parametrize("algorithm", ["dpo", "orpo"])
def test_offline_preference_optimisation(tmp_path, assets, algorithm):
    out = f"file://{tmp_path}/{algorithm}"
    run_stage(
        "rlhf",
        # Held-out prompts: the checked reward is measured before and after offline training too.
        {k: assets[k] for k in ("policy", "preferences", "prompts")} | {"evalPrompts": assets["prompts"]},
        out,
        algorithm=algorithm,
        lr=3e-3,
        maxSteps=6,
        microBatchSize=8,
        maxLen=64,
        checkpointEvery=6,
        evalPrompts=4,
        evalSamples=1,
        maxNewTokens=3,
        rules={"arithmetic": 1.0},
    )
    store = open_store(out)
    s = json.loads(store.get_bytes("summary.json"))
    assert s["eval_prompts"] == 4 and "rule" in s["eval_before"]["greedy"] and "rule" in s["eval_after"]["sampled"]
    steps = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    steps = [r for r in steps if r.get("event") == "step"]
    if algorithm == "dpo":  # policy == reference at step 1: margin 0, loss ln 2
        assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1]["reward_margin"] > steps[0]["reward_margin"]
    assert "pref_accuracy" in steps[-1]
    assert read_export(Path(out.removeprefix("file://")) / "hf")


# ------------------------------------------------------------------------------ the demo chain


def demo_stages(data: dict[str, str]) -> list[dict]:
    """The alignment stages of the demo pipeline (docs/alignment.md prints the same as YAML)."""
    return [
        {
            "name": "sft",
            "kind": "sft",
            "inputs": {"model": "stage://pretrain", "data": data["sft"]},
            "params": {
                "lr": 5e-3,
                "maxLen": 128,
                "microBatchSize": 16,
                "maxSteps": 300,
                "warmupRatio": 0.03,
                "dedup": False,
                "checkpointEvery": 100,
            },
        },
        {
            "name": "rm",
            "kind": "reward",
            "inputs": {"model": "stage://sft", "preferences": data["preferences"]},
            "params": {
                "lr": 1e-3,
                "maxLen": 64,
                "microBatchSize": 32,
                "maxSteps": 100,
                "warmupRatio": 0.05,
                "checkpointEvery": 50,
            },
        },
        {
            "name": "rlhf",
            "kind": "rlhf",
            "inputs": {
                "policy": "stage://sft",
                "reward": "stage://rm",
                "prompts": data["prompts"],
                "evalPrompts": data["evalPrompts"],
            },
            "params": {
                "algorithm": "remax",
                "lr": 2e-4,
                "maxSteps": 40,
                "microBatchSize": 32,
                "maxNewTokens": 6,
                "klCoef": 0.05,
                "rmWeight": 1.0,
                "rules": {"arithmetic": 1.0},
                "evalSamples": 8,
                "checkpointEvery": 20,
            },
        },
    ]


@pytest.mark.slow
def test_demo_chain_pretrain_sft_rm_rlhf_through_the_runner(tmp_path, stage_assets, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = f"file://{tmp_path}/store"
    data = write_demo_alignment_data(store)
    pretrain = {
        "name": "pretrain",
        "kind": "pretrain",
        "inputs": {"tokenizer": stage_assets["tokenizer"], "corpus": stage_assets["corpus"]},
        "params": {"seqLen": 64, "microBatchSize": 4, "maxSteps": 30, "warmupSteps": 3, "checkpointEvery": 30},
    }
    spec = {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "chain"},
        "spec": {"storage": {"uri": store}, "stages": [pretrain, *demo_stages(data)]},
    }
    pipeline = parse_pipeline(json.dumps(spec))
    result = run_training_pipeline(pipeline, workdir=tmp_path / "w")
    last = result.stages[-1][1]
    assert result.succeeded, (last.log_dir / "master-0.log").read_text()[-3000:]
    summary = {
        name: json.loads(stage_output(pipeline, name).get_bytes("summary.json")) for name in ("sft", "rm", "rlhf")
    }
    print(
        json.dumps(
            {
                "sft": [summary["sft"]["loss_first"], summary["sft"]["loss_last"]],
                "rm": summary["rm"]["eval_curve"],
                "rlhf": [summary["rlhf"]["eval_before"], summary["rlhf"]["eval_after"]],
            }
        )
    )
    assert summary["sft"]["loss_last"] < 0.5 * summary["sft"]["loss_first"]
    assert summary["rm"]["held_out_accuracy"] > 0.6
    before, after = summary["rlhf"]["eval_before"], summary["rlhf"]["eval_after"]
    # The RM score rises on held-out prompts; whether the checked reward rises with it depends on the
    # seed on a model this small (docs/alignment.md), so the summary and its headline must say which.
    assert after["sampled"]["rm"] > before["sampled"]["rm"] + 0.5
    g = summary["rlhf"]["reward_guard"]
    rose = after["sampled"]["rule"] - before["sampled"]["rule"] > 2 * g["checked_noise"]
    assert g["checked_rose_with_rm"] == rose and g["sentence"] in headline(summary["rlhf"])
    assert ("did NOT rise" in g["sentence"]) != rose
    for name, png in (("sft", "sft_loss.png"), ("rm", "rm_accuracy.png"), ("rlhf", "rlhf.png")):
        assert stage_output(pipeline, name).exists(f"report/{png}")


def test_frozen_models_are_held_in_the_reference_precision(assets):
    from zhinao.alignment.models import Offloaded, frozen, load_causal_lm
    from zhinao.config.rlhf import RLHFParams

    path = assets["policy"].removeprefix("file://") + "/hf"
    cpu = torch.device("cpu")
    model = frozen(load_causal_lm(path, "sdpa"), RLHFParams(referencePrecision="bf16", offloadFrozen=True), cpu)
    assert not isinstance(model, Offloaded)  # nothing to offload to on CPU
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in frozen(load_causal_lm(path, "sdpa"), RLHFParams(), cpu).parameters())
    ids = torch.tensor([[5, 6, 7]])
    wrapped = Offloaded(model, cpu)
    assert not list(wrapped.parameters())  # not a submodule: moving the wrapper cannot move the model
    assert torch.equal(wrapped(input_ids=ids).logits, model(input_ids=ids).logits)


def test_ppo_critic_runs_in_bf16_like_the_policy_with_fp32_master_weights(tmp_path, assets, monkeypatch):
    """Under `precision: bf16` every matmul of the critic (rollout values and update) computes in bf16,
    as the policy's do, while its trained weights and their gradients stay fp32."""
    from zhinao.alignment import ppo

    seen = {"critic": set(), "policy": set(), "weights": set(), "grads": set()}
    real = ppo.actor_critic

    def watched(policy, critic_init, params):
        ac, groups = real(policy, critic_init, params)
        for name in ("critic", "policy"):
            for m in getattr(ac, name).modules():
                if isinstance(m, torch.nn.Linear):
                    m.register_forward_hook(lambda _m, _i, out, name=name: seen[name].add(out.dtype))
        for p in ac.critic.parameters():
            p.register_hook(lambda g: seen["grads"].add(g.dtype))
        seen["weights"] |= {p.dtype for p in ac.critic.parameters()}
        return ac, groups

    monkeypatch.setattr(ppo, "actor_critic", watched)
    params = {**ONLINE, "algorithm": "ppo", "maxSteps": 1, "ppoEpochs": 1, "evalPrompts": 0}
    params |= {"precision": "bf16", "rolloutPrecision": "bf16"}  # the policy generates in bf16 too
    run_stage("rlhf", {k: assets[k] for k in ("policy", "reward", "prompts")}, f"file://{tmp_path}/ppo", **params)
    assert seen["critic"] == {torch.bfloat16} and seen["policy"] == {torch.bfloat16}
    assert seen["weights"] == {torch.float32} and seen["grads"] == {torch.float32}
