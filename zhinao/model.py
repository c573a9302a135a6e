"""The 360Zhinao architecture, built with transformers.

Pre-norm RMSNorm, SwiGLU, RoPE with fp32 inverse frequencies, no biases except on Q/K/V
(kept for length extrapolation, report section 2.3). transformers' Qwen2 has exactly this shape,
so we configure it rather than re-implement it: checkpoints load anywhere Qwen2 loads.
"""

import importlib.util
import math
from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None
    """None: take the trained tokenizer's vocabulary size."""


def ffn_size(hidden: int, multiple: int = 256) -> int:
    """8/3 x hidden rounded up to a multiple of 256, as the report sizes its SwiGLU."""
    return multiple * math.ceil(8 * hidden / 3 / multiple)


SIZES: dict[str, Size] = {
    # CPU tests and the demo: a few hundred thousand parameters plus the embeddings.
    "tiny": Size(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=ffn_size(64, 16), vocab=None),
    "0.5b": Size(hidden=1024, layers=24, heads=16, kv_heads=16, intermediate=ffn_size(1024), vocab=158464),
    # The report's ablation model (section 2.6): 1.8B parameters with the 158K vocabulary.
    "1.8b": Size(hidden=2048, layers=24, heads=16, kv_heads=16, intermediate=ffn_size(2048), vocab=158464),
    # 360Zhinao-7B (config.json of the released model).
    "7b": Size(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=158464),
}


def attention_implementation(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_config(
    size: str,
    *,
    vocab_size: int | None = None,
    max_position_embeddings: int = 4096,
    rope_theta: float = 10_000.0,
    attention: str = "auto",
) -> Qwen2Config:
    s = SIZES[size]
    vocab = vocab_size or s.vocab
    if vocab is None:
        raise ValueError(f"model size {size!r} takes its vocabulary from the tokenizer; pass vocab_size")
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.01,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=attention_implementation(attention),
    )


def build_model(config: Qwen2Config, *, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls (everything but the input embedding table and norms)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in name)
