"""The 360Zhinao architecture: RMSNorm, SwiGLU, RoPE, biases only on Q/K/V, and the named sizes."""

import torch

from zhinao.model import SIZES, build_config, build_model, ffn_size, matmul_params


def test_7b_matches_the_released_config():
    c = build_config("7b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.vocab_size) == (
        4096,
        32,
        32,
        11008,
        158464,
    )
    assert c.rms_norm_eps == 1e-5 and c.hidden_act == "silu" and not c.tie_word_embeddings


def test_1_8b_is_the_ablation_size():
    with torch.device("meta"):
        model = build_model(build_config("1.8b"), seed=0)
    assert 1.7e9 < sum(p.numel() for p in model.parameters()) < 2.0e9


def test_only_qkv_projections_have_biases():
    model = build_model(build_config("tiny", vocab_size=300), seed=0)
    biases = {name.split(".")[-2] for name, _ in model.named_parameters() if name.endswith("bias")}
    assert biases == {"q_proj", "k_proj", "v_proj"}
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert norms == {"Qwen2RMSNorm"}


def test_ffn_is_eight_thirds_rounded_up():
    assert ffn_size(2048) == 5632 and SIZES["1.8b"].intermediate == 5632


def test_same_seed_same_weights_and_matmul_params_exclude_embeddings():
    a = build_model(build_config("tiny", vocab_size=300), seed=3)
    b = build_model(build_config("tiny", vocab_size=300), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    total = sum(p.numel() for p in a.parameters())
    assert matmul_params(a) < total - 300 * 64 + 1


def test_rope_theta_is_configurable_for_long_context():
    assert build_config("tiny", vocab_size=300, rope_theta=5e7).rope_parameters["rope_theta"] == 5e7
