"""LongContextParams: report defaults and the cross-field checks."""

import pytest
from pydantic import ValidationError

from zhinao.config.longctx import LongContextParams


def test_defaults_follow_the_report():
    p = LongContextParams()
    assert p.rope_theta == 5e7 and p.seq_len == 32768 and p.max_positions == 32768
    assert (p.needle.num_lengths, p.needle.num_depths) == (10, 21)
    wire = LongContextParams.model_validate({"seqLen": 1024, "sequenceParallel": 4, "needle": {"lengths": [512]}})
    assert wire.sequence_parallel == 4 and wire.to_wire()["needle"]["lengths"] == [512]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"seqLen": 1000, "sequenceParallel": 3}, "divisible"),
        ({"seqLen": 1004, "sequenceParallel": 4}, "divisible by 2 x sequenceParallel"),
        ({"sequenceParallel": 2, "zeroStage": 2}, "zeroStage 0 and engine fsdp"),
        ({"sequenceParallel": 2, "engine": "deepspeed"}, "runs under engine ddp or fsdp"),
        ({"seqLen": 4096, "maxPositionEmbeddings": 2048}, "maxPositionEmbeddings"),
        ({"warmupSteps": 100, "maxSteps": 100}, "warmupSteps"),
        ({"ropeTheta": 1e6, "ropeBase": 1e6}, "ropeBase"),
    ],
)
def test_inconsistent_params_are_rejected(params, message):
    with pytest.raises(ValidationError, match=message):
        LongContextParams.model_validate(params)


def test_sequence_parallel_composes_with_fsdp():
    p = LongContextParams.model_validate({"sequenceParallel": 8, "engine": "fsdp", "seqLen": 32768})
    assert p.engine == "fsdp" and p.sequence_parallel == 8
