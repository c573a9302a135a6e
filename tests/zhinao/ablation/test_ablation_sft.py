"""The ablation's SFT evaluation: every run's base is fine-tuned with one fixed recipe, then its answers
are scored by a reward model and the rules, and the scores enter the statistics like any metric."""

import json
import random

import pytest
from ablation_specs import cpu_proxy
from transformers import Qwen2ForSequenceClassification

from zhinao.data.demo_corpus import real_documents
from zhinao.model import build_config
from zhinao.tokenizer import to_transformers, train_bpe
from zhinao_k8s.api.ablation import Ablation, parse_ablation
from zhinao_k8s.api.load import SpecError
from zhinao_k8s.render.ablation_runs import expand_runs
from zhinao_k8s.runner.ablation import run_ablation

SFT = {
    "enabled": True,
    "params": {
        "lr": 5e-3,
        "maxLen": 64,
        "microBatchSize": 16,
        "maxSteps": 8,
        "warmupRatio": 0.1,
        "dedup": False,
        "checkpointEvery": 8,
    },
    "maxNewTokens": 4,
    "samples": 1,
    "maxPrompts": 24,
}


def ablation_doc(root, sft: dict) -> dict:
    return {
        "metadata": {"name": "sfteval"},
        "spec": {
            "storage": {"uri": f"file://{root}/store"},
            "base": {"corpus": f"file://{root}/docs"},
            "recipes": [
                {"name": "a", "dataset": f"file://{root}/docs"},
                {"name": "b", "dataset": f"file://{root}/docs"},
            ],
            "proxy": cpu_proxy(tokens=12 * 4 * 64, seq_len=64, micro_batch=4, memory="2Gi", lr=3e-3),
            "seeds": 2,
            "tokenizer": {"vocabSize": 600},
            "evaluations": {
                "validLoss": {"everySteps": 12, "heldOutShare": 0.2, "maxSequences": 16},
                "benchmarks": {"enabled": False},
                "sft": sft,
            },
        },
    }


def reward_model(root) -> str:
    """An untrained reward model with its own, smaller vocabulary: the policy's answers reach it as text."""
    tokenizer = to_transformers(train_bpe(["1+2=3 I don't know."] * 20, vocab_size=300))
    config = build_config("tiny", vocab_size=len(tokenizer), attention="sdpa")
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    out = root / "rm" / "hf"
    Qwen2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return f"file://{root}/rm"


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfteval")
    (root / "docs").mkdir()
    (root / "docs" / "part-00000.jsonl").write_text(
        "".join(json.dumps(d) + "\n" for d in real_documents(120, random.Random(0)))
    )
    ablation = Ablation.model_validate(ablation_doc(root, {**SFT, "rewardModel": reward_model(root)}))
    return ablation, run_ablation(ablation, workdir=root / "work", in_process=True), root


def test_every_run_fine_tunes_its_own_base_with_the_same_recipe(ablated):
    ablation, _, _ = ablated
    runs = expand_runs(ablation)
    assert [s.name for s in runs[0].pipeline.spec.stages] == ["pretrain", "sft"]
    for run in runs:
        sft = run.pipeline.stage("sft")
        assert run.pipeline.resolve_inputs(sft)["model"] == run.output  # this run's base, not another's
        assert sft.params.seed == run.seed and sft.params.max_steps == 8
    assert (
        len({r.pipeline.stage("sft").params.model_copy(update={"seed": 0}).model_dump_json() for r in runs}) == 1
    )  # one recipe


def test_answers_are_scored_by_the_reward_model_plus_the_rules(ablated):
    _, report, root = ablated
    for metric in ("sft/loss", "sft/score", "sft/score_sampled", "sft/rm", "sft/rule"):
        assert set(report["metrics"][metric]["recipes"]) == {"a", "b"}
    for run in report["runs"]:
        result = json.loads((root / "store" / "sfteval" / "runs" / f"{run['name']}.json").read_text())["sft"]
        greedy = result["greedy"]
        assert greedy["score"] == pytest.approx(greedy["rm"] + greedy["rule"], abs=1e-6)  # rm weight 1, arithmetic 1
        assert greedy["rm"] != 0.0  # the reward model did score the answers
        assert result["prompts"] == 24 and round(greedy["rule"] * 24, 6).is_integer()  # share of right sums
        assert result["loss_last"] < 8.0  # the SFT stage trained (uniform over 600 tokens is 6.4 + specials)


def test_without_a_reward_the_spec_is_rejected_with_its_field_path(tmp_path):
    doc = ablation_doc(tmp_path, {"enabled": True, "rules": {}})
    with pytest.raises(SpecError) as err:
        parse_ablation(json.dumps(doc))
    assert "spec.evaluations.sft: SFT evaluation needs a reward: set rewardModel or rules" in str(err.value)
    doc = ablation_doc(tmp_path, {"enabled": True, "rules": {"arithmatic": 1.0}})
    with pytest.raises(SpecError) as err:
        parse_ablation(json.dumps(doc))
    assert "unknown rule arithmatic" in str(err.value)
