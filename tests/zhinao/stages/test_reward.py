"""The reward stage on a real tiny model: Bradley-Terry training, held-out accuracy, export, resume."""

import json

import pytest
import torch
from alignment_assets import Crash, assert_same_weights, crash_on_step, hf_weights, run_stage, tiny_policy, write_jsonl
from transformers import AutoModelForSequenceClassification

from zhinao.alignment.data import encode_pairs
from zhinao.chat import ChatEncoder
from zhinao.config.reward import RewardParams
from zhinao.storage import open_store
from zhinao.synthetic import all_pairs, preference_pairs
from zhinao.tokenizer import load as load_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    pairs = preference_pairs(all_pairs()[:40], per_pair=2) + [
        {"prompt": "x", "chosen": "a", "rejected": "b", "task": "other"}
    ]
    return {"model": tiny_policy(root / "policy"), "preferences": write_jsonl(root / "prefs", pairs)}


PARAMS = dict(
    lr=3e-3,
    maxLen=64,
    microBatchSize=8,
    maxSteps=8,
    warmupRatio=0.1,
    checkpointEvery=4,
    evalEvery=4,
    task="arithmetic",
    evalFraction=0.2,
)


def test_pairs_are_chat_formatted_and_filtered_by_task(assets):
    tok = load_tokenizer(assets["model"].removeprefix("file://") + "/hf")
    records = [
        {"prompt": "2+2=", "chosen": "4", "rejected": "5", "task": "arithmetic", "margin": 0.5},
        {"prompt": "x", "chosen": "a", "rejected": "b", "task": "other"},
        {"prompt": "2+2=", "chosen": "4", "rejected": "4"},
    ]
    pairs, dropped = encode_pairs(records, tok, RewardParams(task="arithmetic"))
    assert len(pairs) == 1 and dropped == 0
    assert tok.decode(pairs[0]["chosen"]) == "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    assert pairs[0]["prompt_len"] == len(ChatEncoder(tok).prompt([{"role": "user", "content": "2+2="}]))
    assert pairs[0]["margin"] == 0.5
    _, dropped = encode_pairs(records, tok, RewardParams())
    assert dropped == 1  # identical chosen and rejected


def test_reward_model_trains_reports_accuracy_and_exports_a_sequence_classifier(tmp_path, assets):
    out = f"file://{tmp_path}/rm"
    run_stage("reward", assets, out, **PARAMS)
    store = open_store(out)
    s = json.loads(store.get_bytes("summary.json"))
    assert s["steps"] == 8 and s["task"] == "arithmetic"
    # 80 arithmetic pairs, each held out by a seeded hash of its place with probability 0.2
    assert s["pairs_train"] + s["pairs_held_out"] == 80 and 8 <= s["pairs_held_out"] <= 24
    assert [e[0] for e in s["eval_curve"]] == [0, 4, 8]
    assert 0 <= s["held_out_accuracy"] <= 1
    assert s["loss_last"] < s["loss_first"]
    steps = [json.loads(l) for l in store.get_bytes("metrics/rank-0.jsonl").decode().splitlines()]
    assert all("rm_accuracy" in r for r in steps if r.get("event") == "step")
    assert store.exists("report/rm_accuracy.png")
    rm = AutoModelForSequenceClassification.from_pretrained(s["hf"].removeprefix("file://"))
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None
    ids = torch.tensor([[1, 2, 3, 0, 0]])
    assert rm(input_ids=ids).logits.shape == (1, 1)


def test_reward_stage_resumes_to_identical_weights(tmp_path, assets, monkeypatch):
    ref = f"file://{tmp_path}/ref"
    run_stage("reward", assets, ref, **PARAMS)
    out = f"file://{tmp_path}/crashed"
    with monkeypatch.context() as m:
        crash_on_step(m, 6)
        with pytest.raises(Crash):
            run_stage("reward", assets, out, **PARAMS)
    run_stage("reward", assets, out, **PARAMS)
    assert_same_weights(hf_weights(ref), hf_weights(out))
    assert (
        json.loads(open_store(out).get_bytes("summary.json"))["eval_curve"]
        == json.loads(open_store(ref).get_bytes("summary.json"))["eval_curve"]
    )
