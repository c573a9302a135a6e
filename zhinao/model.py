"""The 360Zhinao architecture, built with transformers.

Pre-norm RMSNorm, SwiGLU, RoPE with fp32 inverse frequencies, no biases except on Q/K/V
(kept for length extrapolation, report section 2.3). transformers' Qwen2 has exactly this shape,
so we configure it rather than re-implement it: checkpoints load anywhere Qwen2 loads.
"""

import importlib.util
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM


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
    """Randomly initialised. `from_config` (the same weights as the constructor) builds it partitioned
    under DeepSpeed ZeRO-3 (see engine_builder.model_construction)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _rope_in_autocast_dtype(module, args, output):
    cos, sin = output
    device = cos.device.type
    if not torch.is_autocast_enabled(device):
        return output
    dtype = torch.get_autocast_dtype(device)
    return cos.to(dtype), sin.to(dtype)


def rope_in_compute_dtype(model: torch.nn.Module) -> torch.nn.Module:
    """Under autocast, hand attention bf16 queries and keys, as bf16 weights would.

    The rotary tables take the dtype of the hidden states, which stay fp32 when fp32 weights run
    under autocast; q and k (bf16 from their projections) times an fp32 table are promoted back to
    fp32, and flash-attn refuses fp32. The tables are still computed in fp32 from fp32 inverse
    frequencies; only their product with q and k is in the compute dtype. Returns `model`.
    """
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            module.register_forward_hook(_rope_in_autocast_dtype)
    return model


def param_shape(p: torch.nn.Parameter) -> torch.Size:
    """A parameter's shape, also where DeepSpeed's zero.Init left only a partition here (`ds_shape`)."""
    return getattr(p, "ds_shape", p.shape)


def num_params(model: torch.nn.Module) -> int:
    return sum(math.prod(param_shape(p)) for p in model.parameters())


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls (everything but the input embedding table and norms)."""
    return sum(
        math.prod(param_shape(p))
        for name, p in model.named_parameters()
        if len(param_shape(p)) >= 2 and "embed_tokens" not in name
    )


# ----------------------------------------------------------------------------- activation checkpointing

CheckpointMode = Literal["off", "full", "blocks", "ops"]

# Outputs worth keeping under `ops`: the matmuls and attention are most of a block's FLOPs, while the
# norms, SwiGLU gate and residual adds they feed are cheap to redo (torchtitan's selective-op idea).
_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: torch.nn.Module, mode: CheckpointMode, *, every: int = 2) -> int:
    """Recompute transformer blocks' activations in backward instead of keeping them; returns blocks wrapped.

    full: every block keeps only its input. blocks: every `every`-th block does (a middle ground
    between memory and the ~1/3 extra compute of full). ops: every block keeps its matmul and
    attention outputs and recomputes the rest. Must run before the engine shards the blocks.
    The wrapper strips its prefix from state_dict keys, so checkpoints and exports are unchanged.
    """
    if mode == "off":
        return 0
    layers = model.model.layers
    wrapped = 0
    for i, layer in enumerate(layers):
        if mode == "blocks" and i % every != 0:
            continue
        kwargs = {"context_fn": partial(create_selective_checkpoint_contexts, _save_matmuls)} if mode == "ops" else {}
        layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False, **kwargs)
        wrapped += 1
    return wrapped


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers (checkpoint-wrapped or not): the unit FSDP shards and AC recomputes.

    Of every transformer inside `model` (PPO's actor-critic holds two), in module order.
    """
    return [
        block
        for module in model.modules()
        if isinstance(getattr(module, "layers", None), torch.nn.ModuleList)
        for block in module.layers
    ]
