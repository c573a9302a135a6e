"""The stage kinds: the one registry of kinds (pure: pydantic models only).

A kind names its typed parameters; its code is the module `zhinao.stages.<kind>` (a `Params`
alias and a `run`), which `python -m zhinao` finds from here; its spec model
(operator/zhinao_k8s/api/v1alpha1.py, `<Kind>Stage`: the inputs it reads and its cross-field
rules) takes `STAGE_KINDS` from here. tests/test_stage_kinds.py checks that the registry, the
spec's stage models, the stage modules, README.md's "Stage kinds" line and docs/kubernetes.md's
table agree, so a kind added in one place and missing in another fails the suite.
"""

from dataclasses import dataclass

from zhinao.config._base import SpecModel
from zhinao.config.data import DataParams
from zhinao.config.longctx import LongContextParams
from zhinao.config.pretrain import PretrainParams
from zhinao.config.reward import RewardParams
from zhinao.config.rlhf import RLHFParams
from zhinao.config.sft import SFTParams
from zhinao.config.tokenizer import TokenizerParams


@dataclass(frozen=True)
class StageKind:
    kind: str
    """The `kind` a spec's stage names."""
    params: type[SpecModel]
    """The stage's typed hyperparameters (`params` in the spec)."""
    spec_model: str
    """The class name of its spec model in operator/zhinao_k8s/api/v1alpha1.py."""

    @property
    def module(self) -> str:
        """The module that runs it (`python -m zhinao` imports it by kind)."""
        return f"zhinao.stages.{self.kind}"


STAGE_KINDS: tuple[StageKind, ...] = (
    StageKind("data", DataParams, "DataStage"),
    StageKind("tokenizer", TokenizerParams, "TokenizerStage"),
    StageKind("pretrain", PretrainParams, "PretrainStage"),
    StageKind("longctx", LongContextParams, "LongContextStage"),
    StageKind("sft", SFTParams, "SFTStage"),
    StageKind("reward", RewardParams, "RewardStage"),
    StageKind("rlhf", RLHFParams, "RLHFStage"),
)
"""In pipeline order (the order the docs and error messages list them)."""

KIND_NAMES: tuple[str, ...] = tuple(k.kind for k in STAGE_KINDS)
