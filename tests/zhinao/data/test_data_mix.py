"""Mixing: factors toward target ratios with the oversampling cap, deterministic copies."""

import numpy as np
import pytest

from zhinao.config.data import MixConfig
from zhinao.data.mix import copies, mix_factors, mix_key

TARGETS = {"webpages": 0.6, "code": 0.2, "math": 0.2}


def test_upsample_keeps_the_most_abundant_source_at_1x():
    f = mix_factors({"webpages": 600, "code": 100, "math": 150}, MixConfig(targets=TARGETS))
    assert f == pytest.approx({"webpages": 1.0, "code": 2.0, "math": 200 / 150})


def test_oversampling_is_capped():
    f = mix_factors({"webpages": 6000, "code": 10, "math": 2000}, MixConfig(targets=TARGETS))
    assert f["code"] == 5.0 and f["webpages"] == 1.0


def test_downsampling_hits_targets_exactly():
    tokens = {"webpages": 6000, "code": 100, "math": 2000}
    f = mix_factors(tokens, MixConfig(targets=TARGETS, allow_downsample=True))
    out = {k: tokens[k] * f[k] for k in tokens}
    total = sum(out.values())
    assert {k: v / total for k, v in out.items()} == pytest.approx(TARGETS)
    assert f["code"] == 5.0 and f["webpages"] < 1


def test_fixed_budget_and_untargeted_sources():
    f = mix_factors(
        {"webpages": 1000, "code": 1000, "forum": 50},
        MixConfig(targets={"webpages": 0.5, "code": 0.5}, target_tokens=1000),
    )
    assert f == pytest.approx({"webpages": 0.5, "code": 0.5, "forum": 1.0})
    assert mix_key("forum", TARGETS) == "other" and mix_key("code", TARGETS) == "code"


def test_copies_are_deterministic_and_average_to_the_factor():
    n = np.array([copies(g, 2.3, seed=7) for g in range(20000)])
    assert set(n.tolist()) == {2, 3}
    assert n.mean() == pytest.approx(2.3, abs=0.02)
    assert [copies(g, 2.3, seed=7) for g in range(50)] == n[:50].tolist()
    assert copies(5, 0.0, seed=1) == 0 and copies(5, 3.0, seed=1) == 3
