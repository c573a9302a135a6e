"""The Hugging Face layout of an export: safetensors shards of a bounded size and their index.

    model-00001-of-00003.safetensors ...    tensors in state-dict order, each shard <= the max size
    model.safetensors.index.json            {"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}
    config.json (+ generation_config.json)  the config with its dtype set to the weights'

`from_pretrained` reads the index and loads shard by shard. The index is written even for one
shard, so that every export has the same shape. Tensors are cast to the export dtype one shard at a
time: rank 0, which alone holds the gathered weights, never holds a second full copy.
"""

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

INDEX = "model.safetensors.index.json"


def shard_groups(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Tensor names (in order) grouped into shards of at most `max_bytes`; a tensor larger than
    that gets a shard of its own."""
    if max_bytes < 1:
        raise ValueError(f"max shard size must be positive, got {max_bytes}")
    groups: list[list[str]] = []
    filled = max_bytes  # forces a first group
    for name, size in sizes.items():
        if filled + size > max_bytes and (not groups or groups[-1]):
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += size
    return [g for g in groups if g]


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def write_export(
    state: dict[str, torch.Tensor], model, dest: Path, *, dtype: torch.dtype, max_shard_bytes: int
) -> dict:
    """Write `state` (floating tensors cast to `dtype`) as shards + index, and `model`'s config,
    under `dest`; returns the index."""
    dest.mkdir(parents=True, exist_ok=True)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = {k: v.numel() * (itemsize if v.is_floating_point() else v.element_size()) for k, v in state.items()}
    groups = shard_groups(sizes, max_shard_bytes)
    weight_map: dict[str, str] = {}
    for i, names in enumerate(groups, start=1):
        file = shard_name(i, len(groups))
        # contiguous copies: safetensors refuses views and tensors that share memory (tied weights)
        save_file({k: cast(state[k]).contiguous().clone() for k in names}, dest / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (dest / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    config.save_pretrained(dest)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(dest)
    return index


def read_export(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face export: through its index (what `write_export` writes), or
    the single `model.safetensors` of an unsharded one (`save_pretrained` of a small model)."""
    if not (directory / INDEX).exists():
        return load_file(directory / "model.safetensors")
    index = json.loads((directory / INDEX).read_text())
    state: dict[str, torch.Tensor] = {}
    for file in dict.fromkeys(index["weight_map"].values()):
        state.update(load_file(directory / file))
    return state
