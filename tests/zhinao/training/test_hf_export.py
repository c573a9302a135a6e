"""The hf/ export: bf16 safetensors shards of a bounded size with a Hugging Face index, which
from_pretrained loads into a model that computes what the trained one does."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from zhinao.model import build_config, build_model
from zhinao.training.hf_export import INDEX, read_export, shard_groups, shard_name, write_export


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "expected"),
    [
        ({"a": 4, "b": 4, "c": 4}, 8, [["a", "b"], ["c"]]),
        ({"a": 4, "b": 4, "c": 4}, 100, [["a", "b", "c"]]),
        ({"a": 2, "big": 50, "c": 2}, 10, [["a"], ["big"], ["c"]]),  # an oversized tensor alone
        ({"big": 50}, 10, [["big"]]),
        ({}, 10, []),
    ],
)
def test_shard_groups_keep_order_and_bound_each_shard(sizes, max_bytes, expected):
    assert shard_groups(sizes, max_bytes) == expected


def test_shard_groups_reject_a_non_positive_size():
    with pytest.raises(ValueError, match="max shard size"):
        shard_groups({"a": 1}, 0)


def test_shard_name_is_hugging_face_s():
    assert shard_name(2, 13) == "model-00002-of-00013.safetensors"


def _trained_model():
    model = build_model(build_config("tiny", vocab_size=96, attention="sdpa"), seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # weights that differ from any seeded initialisation
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), batch


def test_sharded_bf16_export_loads_with_from_pretrained_and_computes_like_the_trained_model(tmp_path):
    model, batch = _trained_model()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    index = write_export(state, model, tmp_path, dtype=torch.bfloat16, max_shard_bytes=40_000)

    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) > 2 and files == [shard_name(i, len(files)) for i in range(1, len(files) + 1)]
    assert json.loads((tmp_path / INDEX).read_text()) == index
    assert set(index["weight_map"]) == set(state)  # every tensor listed ...
    for file in files:
        with safe_open(tmp_path / file, "pt") as f:
            names = set(f.keys())
            assert names == {k for k, v in index["weight_map"].items() if v == file}  # ... where it is
            assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
        assert (tmp_path / file).stat().st_size <= 40_000 + 4096  # the shard bound, plus its header
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in state.values())

    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16  # the config says so
    # The trained model with its weights rounded to bf16, computing in fp32 like the loaded one:
    # the same numbers exactly, so any tensor lost, misplaced or mis-cast would show.
    with torch.no_grad():
        for value in model.state_dict().values():
            value.copy_(value.to(torch.bfloat16))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=batch).logits, model(input_ids=batch).logits)
    exported = read_export(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(exported[name].float(), value), name


def test_fp32_export_keeps_the_trained_weights_exactly(tmp_path):
    model, _ = _trained_model()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_export(state, model, tmp_path, dtype=torch.float32, max_shard_bytes=10**9)
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [shard_name(1, 1)]
    exported = read_export(tmp_path)
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], v) for k, v in state.items())


def test_read_export_also_reads_an_unsharded_save_pretrained(tmp_path):
    model, _ = _trained_model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    exported = read_export(tmp_path)
    assert exported.keys() == model.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())
