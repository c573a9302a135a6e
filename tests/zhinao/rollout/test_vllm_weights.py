"""The weight push to vLLM (vLLM itself needs a GPU): the policy's tensors go under exactly the
names of its Hugging Face checkpoint, which vLLM's model loader reads, as bf16 copies of the values."""

import torch
from safetensors.torch import load_file

from zhinao.model import build_config, build_model
from zhinao.rollout.vllm_engine import vllm_weights


def test_pushed_weights_are_the_hf_checkpoint_names_in_bf16(tmp_path):
    model = build_model(build_config("tiny", vocab_size=300, attention="sdpa"), seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    saved = load_file(tmp_path / "model.safetensors")
    pushed = dict(vllm_weights(model))
    assert pushed.keys() == saved.keys()
    for name, tensor in pushed.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, saved[name].to(torch.bfloat16)), name


def test_a_ddp_wrapper_prefix_is_removed(tmp_path):
    model = build_model(build_config("tiny", vocab_size=300, attention="sdpa"), seed=0)
    wrapped = torch.nn.Module()
    wrapped.module = model
    assert dict(vllm_weights(wrapped)).keys() == dict(vllm_weights(model)).keys()
