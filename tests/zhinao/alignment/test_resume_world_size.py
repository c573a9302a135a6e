"""SFT and reward runs counted in epochs resume only with the world size that counted their steps;
with maxSteps any world size continues (the data position then decides: zhinao.data.stream_order)."""

import pytest

from zhinao.alignment.data import refuse_epochs_at_another_world_size
from zhinao.config.reward import RewardParams
from zhinao.config.sft import SFTParams

SAVED = {"step": 4, "world_size": 2}


@pytest.mark.parametrize("params", [SFTParams(), RewardParams()], ids=["sft", "reward"])
def test_epochs_at_another_world_size_are_refused_in_one_line(params):
    with pytest.raises(SystemExit) as err:
        refuse_epochs_at_another_world_size(SAVED, params, 1, stage="sft")
    line = str(err.value)
    assert "\n" not in line and line.startswith(
        "sft: the checkpoint of step 4 was written by 2 ranks and this run has 1"
    )
    assert "Resume with 2 ranks" in line and "maxSteps and stream.elastic" in line


@pytest.mark.parametrize(
    ("meta", "params", "world_size"),
    [
        ({}, SFTParams(), 4),  # a fresh start
        (SAVED, SFTParams(), 2),
        (SAVED, SFTParams(maxSteps=10), 1),
        (SAVED, RewardParams(maxSteps=10), 3),
    ],
)
def test_the_same_world_size_or_max_steps_resumes(meta, params, world_size):
    refuse_epochs_at_another_world_size(meta, params, world_size, stage="sft")
