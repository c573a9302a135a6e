"""Which engine and activation checkpointing a stage's settings and model size pick."""

import pytest
from pydantic import ValidationError

from zhinao.config.longctx import LongContextParams
from zhinao.config.pretrain import PretrainParams
from zhinao.config.sft import SFTParams
from zhinao.training.engine_builder import checkpoint_mode, engine_kind

B = 1_000_000_000


@pytest.mark.parametrize(
    ("params", "n_params", "world", "expected"),
    [
        (PretrainParams(), 7.8 * B, 8, "fsdp"),  # the sharded default from 1B
        (PretrainParams(), 0.5 * B, 8, "ddp"),  # small models stay replicated
        (PretrainParams(), 7.8 * B, 1, "ddp"),  # nothing to shard across
        (PretrainParams(zero_stage=2), 7.8 * B, 8, "deepspeed"),
        (PretrainParams(engine="ddp"), 7.8 * B, 8, "ddp"),
        (SFTParams(), 7.8 * B, 8, "ddp"),  # evaluates with the bare model: not FSDP
        (SFTParams(engine="deepspeed"), 7.8 * B, 8, "deepspeed"),
        (LongContextParams(sequence_parallel=8), 7.8 * B, 8, "fsdp"),  # the ring under FSDP2
        (LongContextParams(sequence_parallel=8), 0.5 * B, 8, "ddp"),
    ],
)
def test_engine_kind(params, n_params, world, expected):
    assert engine_kind(params, n_params=n_params, world_size=world) == expected


def test_activation_checkpointing_is_on_from_1b_unless_set():
    assert checkpoint_mode(PretrainParams(), n_params=1.8 * B) == "full"
    assert checkpoint_mode(PretrainParams(), n_params=0.5 * B) == "off"
    assert checkpoint_mode(PretrainParams(activation_checkpointing="ops"), n_params=0.5 * B) == "ops"


def test_fsdp_is_refused_where_the_stage_uses_the_bare_model():
    with pytest.raises(ValidationError, match="engine: fsdp is for the pretrain and longctx stages"):
        SFTParams(engine="fsdp")
