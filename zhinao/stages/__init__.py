"""One module per stage kind, each with the same skeleton:

    Params  the stage's typed hyperparameters (a zhinao.config model)
    run(rt: StageRuntime, params: Params) -> None

`python -m zhinao` (what every PyTorchJob replica runs under torchrun) reads the StageRuntime
from its stage spec file and calls the module named by its kind. The kinds are registered in
zhinao.config.kinds, the one place a new kind is added.
"""

from importlib import import_module

from zhinao.config.kinds import STAGE_KINDS
from zhinao.config.runtime import StageRuntime

STAGE_MODULES = {k.kind: k.module for k in STAGE_KINDS}


def run_stage(rt: StageRuntime) -> None:
    try:
        module = import_module(STAGE_MODULES[rt.kind])
    except KeyError:
        raise SystemExit(f"unknown stage kind {rt.kind!r}; known: {', '.join(sorted(STAGE_MODULES))}") from None
    module.run(rt, module.Params.model_validate(rt.params))
