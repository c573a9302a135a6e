"""Loading a stage's Hugging Face export as the model an alignment method trains or scores with,
and holding the frozen ones (reference, reward model) in their precision and place."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from zhinao.config.rlhf import RLHFParams
from zhinao.model import attention_implementation, rope_in_compute_dtype
from zhinao.training.engine import Engine, computing_in
from zhinao.training.engine_builder import autocast_dtype


def load_causal_lm(model_dir: Path, attention: str):
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attention_implementation(attention)
    )


def load_reward_model(model_dir, attention: str, pad_id: int):
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32, attn_implementation=attention_implementation(attention)
    )
    model.config.pad_token_id = pad_id  # the head pools the last non-pad token
    return model


class Offloaded(torch.nn.Module):
    """A frozen model kept in CPU memory and moved onto the device for each forward pass only."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner, self.device = [model], device  # a list: not a submodule, so .to() elsewhere cannot move it

    def forward(self, **inputs):
        model = self.inner[0].to(self.device)
        try:
            return model(**inputs)
        finally:
            model.to("cpu")


def frozen(
    model: torch.nn.Module, params: RLHFParams, device: torch.device, engine: Engine | None = None
) -> torch.nn.Module:
    """The reference or reward model held in `referencePrecision`, offloaded to CPU or on the device
    where the policy's `engine` places it (sharded under FSDP2). Its forwards compute in the stage's
    `precision` wherever they are called from (held-out scoring included), as the policy's do."""
    model = rope_in_compute_dtype(model.eval().requires_grad_(False))
    if autocast_dtype(params.reference_precision, device) == torch.bfloat16:
        model = model.to(torch.bfloat16)
    compute = autocast_dtype(params.precision, device)
    if params.offload_frozen and device.type != "cpu":  # a whole copy per rank, not the engine's placement
        return computing_in(Offloaded(model, device), device, compute)
    model = model.to(device)
    return engine.place_frozen(model) if engine is not None else computing_in(model, device, compute)
