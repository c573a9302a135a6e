"""The RoPE base change of the long-context extension (report section 3.1.3).

Raising the base theta stretches every rotary wavelength, so positions far beyond the pretraining
length still map to angles the model has seen at low frequencies. The report keeps the inverse
frequencies in FP32 (section 2.3): with base 5e7 and bf16 (8 mantissa bits) the low frequencies
would collapse onto a few representable values, so `apply_rope_base` recomputes them in float64,
stores them as float32, and `ensure_fp32_inv_freq` restores them after any `model.to(dtype)`.
"""

import torch

REPORT_ROPE_THETA = 50_000_000.0
"""The report's final base for both the 32K and the 360K model."""


def inverse_frequencies(theta: float, head_dim: int) -> torch.Tensor:
    """theta ** (-2i / head_dim) for i in [0, head_dim/2), computed in float64, returned as float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (1.0 / (float(theta) ** exponents)).to(torch.float32)


def rope_theta_of(config) -> float:
    """The RoPE base of a transformers config (v5 `rope_parameters`, or the v4 `rope_theta` field)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)


def set_rope_base(config, theta: float, *, max_position_embeddings: int | None = None) -> float:
    """Set the base (plain, unscaled RoPE) and optionally the position limit on `config`; returns the old base."""
    old = rope_theta_of(config)
    params = dict(getattr(config, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"only plain RoPE is supported, the model uses rope_type={params['rope_type']!r}")
    params.update(rope_type="default", rope_theta=float(theta))
    config.rope_parameters = params
    if hasattr(config, "rope_theta"):  # transformers 4.x keeps the base as its own field
        config.rope_theta = float(theta)
    if max_position_embeddings is not None:
        config.max_position_embeddings = int(max_position_embeddings)
    return old


def rotary_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "inv_freq") and isinstance(m.inv_freq, torch.Tensor)]


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def apply_rope_base(model, theta: float, *, max_position_embeddings: int | None = None) -> float:
    """Change the RoPE base of a loaded transformers model in place; returns the old base.

    Updates the config (so save_pretrained exports the new base) and recomputes every rotary
    module's inverse frequencies in fp32 on the module's device.
    """
    old = set_rope_base(model.config, theta, max_position_embeddings=max_position_embeddings)
    modules = rotary_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no rotary embedding module (no `inv_freq` buffer)")
    inv = inverse_frequencies(theta, _head_dim(model.config))
    for m in modules:
        m.inv_freq = inv.to(m.inv_freq.device)
        if hasattr(m, "original_inv_freq"):
            m.original_inv_freq = inv.clone().to(m.inv_freq.device)
        if max_position_embeddings is not None:
            for attr in ("max_seq_len_cached", "original_max_seq_len"):
                if hasattr(m, attr):
                    setattr(m, attr, int(max_position_embeddings))
    return old


def ensure_fp32_inv_freq(model: torch.nn.Module) -> None:
    """Recompute inverse frequencies in fp32 after a dtype cast (model.to(bfloat16) casts buffers too)."""
    inv = inverse_frequencies(rope_theta_of(model.config), _head_dim(model.config))
    for m in rotary_modules(model):
        if m.inv_freq.dtype != torch.float32:
            m.inv_freq = inv.to(m.inv_freq.device)
            if hasattr(m, "original_inv_freq"):
                m.original_inv_freq = inv.clone().to(m.inv_freq.device)
