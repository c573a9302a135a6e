"""The SFT stage on a real tiny model: training, per-document packing, curation, resume."""

import json

import pytest
import torch
from alignment_assets import Crash, assert_same_weights, crash_on_step, hf_weights, run_stage, tiny_policy, write_jsonl
from transformers import AutoModelForCausalLM

from zhinao.data import sft_tools
from zhinao.storage import open_store
from zhinao.synthetic import sft_conversations


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads are 20x slower
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = sft_conversations(300, seed=1)
    data += [dict(data[0])] * 5 + [{"messages": [{"role": "user", "content": "no answer"}]}]
    return {"model": tiny_policy(root / "policy"), "data": write_jsonl(root / "data", data)}


PARAMS = dict(lr=3e-3, maxLen=64, microBatchSize=8, maxSteps=12, warmupRatio=0.1, checkpointEvery=4, evalFraction=0.1)


def test_sft_learns_curates_and_exports(tmp_path, assets):
    out = f"file://{tmp_path}/sft"
    run_stage("sft", assets, out, packing="document", **PARAMS)
    store = open_store(out)
    s = json.loads(store.get_bytes("summary.json"))
    assert s["steps"] == 12 and s["loss_last"] < s["loss_first"]
    assert s["eval_loss_after"] < s["eval_loss_before"]
    assert s["data"]["invalid"] == 1 and s["data"]["duplicates"] >= 5
    assert store.exists("report/sft_loss.png") and store.exists("report/sft.md")
    records = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    assert all(r["target_tokens"] > 0 for r in records if r.get("event") == "step")
    model = AutoModelForCausalLM.from_pretrained(s["hf"].removeprefix("file://"))
    assert model.config.model_type == "qwen2"
    assert store.exists("hf/tokenizer.json")


def test_sft_resumes_mid_run_to_identical_weights(tmp_path, assets, monkeypatch):
    ref = f"file://{tmp_path}/ref"
    run_stage("sft", assets, ref, **PARAMS)
    out = f"file://{tmp_path}/crashed"
    with monkeypatch.context() as m:
        crash_on_step(m, 7)  # after the step-4 checkpoint
        with pytest.raises(Crash):
            run_stage("sft", assets, out, **PARAMS)
    assert open_store(out).get_bytes("checkpoints/latest").decode().strip() == "step-00000004"
    run_stage("sft", assets, out, **PARAMS)
    assert_same_weights(hf_weights(ref), hf_weights(out))
    steps = [
        json.loads(l)["step"]
        for l in open_store(out).get_bytes("metrics/rank-0.jsonl").decode().splitlines()
        if json.loads(l).get("event") == "step"
    ]
    assert steps == list(range(1, 13))


def test_sft_curation_drops_low_rated_sources_and_reweights_by_label(tmp_path, assets):
    data = [dict(r) for r in sft_conversations(40, seed=3)]
    unique = sft_tools.dedup(data)[0]
    for i, r in enumerate(unique):  # one source rated low by its records, one with no rating at all
        r["source"], r["rating"] = ("low", 1) if i % 4 == 0 else ("good", 5)
        r["difficulty"] = "hard" if i % 2 else "easy"
    rated = {"model": assets["model"], "data": write_jsonl(tmp_path / "rated", unique)}
    out = f"file://{tmp_path}/curated"
    weights = {"difficulty:hard": 2.0, "difficulty:easy": 0.0}
    run_stage("sft", rated, out, **{**PARAMS, "maxSteps": 1, "minSourceRating": 3, "labelWeights": weights})
    d = json.loads(open_store(out).get_bytes("summary.json"))["data"]
    low = sum(1 for i in range(len(unique)) if i % 4 == 0)
    hard_kept = sum(1 for i in range(len(unique)) if i % 4 and i % 2)
    assert d["dropped_sources"] == 1 and d["dropped_source_records"] == low and d["duplicates"] == 0
    assert d["records_used"] == 2 * hard_kept  # hard ones twice, easy ones pruned
