"""One module per stage kind, each with the same skeleton:

    Params  the stage's typed hyperparameters (a zhinao.config model)
    run(rt: StageRuntime, params: Params) -> None

`python -m zhinao` (what every PyTorchJob replica runs under torchrun) reads the StageRuntime
from its stage spec file and calls the module named by its kind.
"""

from importlib import import_module

from zhinao.config.runtime import StageRuntime

STAGE_MODULES = {
    "data": "zhinao.stages.data",
    "tokenizer": "zhinao.stages.tokenizer",
    "pretrain": "zhinao.stages.pretrain",
    "longctx": "zhinao.stages.longctx",
    "sft": "zhinao.stages.sft",
    "reward": "zhinao.stages.reward",
    "rlhf": "zhinao.stages.rlhf",
}


def run_stage(rt: StageRuntime) -> None:
    try:
        module = import_module(STAGE_MODULES[rt.kind])
    except KeyError:
        raise SystemExit(f"unknown stage kind {rt.kind!r}; known: {', '.join(sorted(STAGE_MODULES))}") from None
    module.run(rt, module.Params.model_validate(rt.params))
