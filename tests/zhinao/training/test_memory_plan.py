"""The memory planner: its figure against a real CPU run, and the fit decisions validate makes."""

import pytest

from zhinao.config.pretrain import PretrainParams
from zhinao.training.memory_measure import config_of, measure_args, measure_peak_rss
from zhinao.training.memory_plan import CATEGORIES, plan_training_step


@pytest.mark.slow
@pytest.mark.parametrize("ac", ["off", "full"])
def test_planned_peak_is_within_15_percent_of_a_real_cpu_step(ac):
    """117M parameters (0.5b shape, 4 layers, 32K vocabulary), fp32 on CPU as the real run trains there."""
    fields = {"engine": "ddp", "precision": "fp32", "activation_checkpointing": ac}
    args = measure_args("0.5b", vocab=32_000, layers=4, params=fields, micro_batch=2, seq_len=512)
    plan = plan_training_step(config_of(args), PretrainParams(**fields), world_size=1, micro_batch=2, seq_len=512)
    assert set(plan.breakdown) == set(CATEGORIES)
    assert plan.breakdown["optimizer"] >= 8 * plan.n_params  # two fp32 Adam moments (+ the step's temporaries)
    measured = measure_peak_rss(args)
    assert plan.peak == pytest.approx(measured, rel=0.15), (plan.breakdown, measured)
