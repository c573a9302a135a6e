"""Statistics of the ablation environment against hand-computed values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as st

from zhinao.ablation import stats


def test_mean_std_pooled_and_effect_size_match_hand_computed_values():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    assert stats.mean(a) == 2.0 and stats.std(a) == 1.0 and stats.std(b) == 2.0
    # pooled = sqrt((2*1 + 2*4) / 4) = sqrt(2.5)
    assert stats.pooled_std(a, b) == pytest.approx(math.sqrt(2.5))
    assert stats.effect_size(a, b) == pytest.approx(-2.0 / math.sqrt(2.5))
    assert stats.std([5.0]) == 0.0


def test_welch_matches_scipy_and_the_textbook_formula():
    a, b = [3.1, 2.9, 3.3, 3.0], [2.5, 2.7, 2.2]
    t, p = stats.welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert t == pytest.approx((np.mean(a) - np.mean(b)) / math.sqrt(va + vb))


def test_identical_samples_are_not_different_and_constant_shifts_are():
    same = stats.compare("x", [1.0, 1.0, 1.0], "y", [1.0, 1.0, 1.0])
    assert (same.p, same.detected, same.effect_size) == (1.0, False, 0.0)
    noisy = stats.compare("x", [1.0, 1.2, 0.9], "y", [1.0, 1.2, 0.9])
    assert not noisy.detected and noisy.diff == 0 and noisy.p == pytest.approx(1.0)
    shifted = stats.compare("x", [2.0, 2.0, 2.0], "y", [1.0, 1.0, 1.0])
    assert shifted.detected and shifted.effect_size == math.inf


def test_a_large_separation_is_detected_and_a_small_one_is_not():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 3)
    assert stats.compare("a", a, "b", a + 10).detected
    assert not stats.compare("a", [0.0, 1.0, 2.0], "b", [0.1, 1.1, 2.1]).detected


def test_bootstrap_ci_is_seeded_brackets_the_mean_and_covers_the_truth_mostly():
    vals = [1.0, 2.0, 4.0]
    lo, hi = stats.bootstrap_ci(vals, seed=3)
    assert (lo, hi) == stats.bootstrap_ci(vals, seed=3)
    assert min(vals) <= lo <= stats.mean(vals) <= hi <= max(vals)
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        lo, hi = stats.bootstrap_ci(rng.normal(5.0, 1.0, 20), samples=500, seed=0)
        covered += lo <= 5.0 <= hi
    # the percentile bootstrap under-covers a little at n=20; far from 95% would be a bug
    assert 0.85 <= covered / 200 <= 0.99


def test_metric_quality_flags_noise_insensitivity_and_constants():
    sensitive = stats.metric_quality("loss", {"a": [5.0, 5.01, 4.99], "b": [5.5, 5.51, 5.49]})
    assert sensitive.flags == [] and sensitive.detected_pairs == 1
    assert sensitive.cv == pytest.approx(0.01 / 5.25)
    # spread of means 0.3536 / (noise 0.01 / sqrt 3)
    assert sensitive.sensitivity == pytest.approx(np.std([5.0, 5.5], ddof=1) / (0.01 / math.sqrt(3)))
    insensitive = stats.metric_quality("acc", {"a": [0.5, 0.6, 0.4], "b": [0.55, 0.45, 0.5]})
    assert "insensitive" in insensitive.flags and "unstable" in insensitive.flags
    assert stats.metric_quality("zero", {"a": [0.0] * 3, "b": [0.0] * 3}).flags == ["constant", "insensitive"]


def test_analyse_ranks_the_sensitive_metric_first():
    out = stats.analyse(
        {
            "noisy": {"a": [0.5, 0.6, 0.4], "b": [0.55, 0.45, 0.5]},
            "loss": {"a": [5.0, 5.01, 4.99], "b": [5.5, 5.51, 5.49]},
        }
    )
    assert [q["metric"] for q in out["ranking"]] == ["loss", "noisy"]
    pair = out["metrics"]["loss"]["pairs"][0]
    assert pair["a"] == "a" and pair["diff"] == pytest.approx(-0.5) and pair["detected"]
    assert out["metrics"]["loss"]["recipes"]["b"]["mean"] == pytest.approx(5.5)


def test_holm_adjusts_each_p_by_its_rank_and_keeps_the_order_monotone():
    # sorted: 0.01 x 3 = 0.03; 0.02 x 2 = 0.04; 0.04 x 1 = 0.04 (never below the previous one)
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4 x 2, then max(0.8, 0.5)
    assert stats.holm([0.9, 0.6]) == [1.0, 1.0]  # capped at 1
    assert math.isnan(stats.holm([math.nan, 0.01])[0]) and stats.holm([math.nan, 0.01])[1] == 0.01  # nan is no test


def test_with_many_recipes_a_metric_shows_a_false_detection_at_most_alpha_of_the_time():
    """Six identical recipes give 15 pairs per metric: unadjusted, a third of the metrics would show a
    'difference'; Holm keeps the family-wise rate at or below alpha."""
    rng = np.random.default_rng(7)
    trials, raw_hits, holm_hits = 400, 0, 0
    for _ in range(trials):
        values = {f"r{i}": list(rng.normal(0.0, 1.0, 3)) for i in range(6)}
        pairs = stats.pairwise(values)
        raw_hits += any(p.p < stats.ALPHA for p in pairs)
        holm_hits += any(p.detected for p in pairs)
    assert raw_hits / trials > 0.2
    assert holm_hits / trials <= stats.ALPHA + 0.02


def test_a_real_difference_survives_the_adjustment():
    values = {"good": [5.00, 5.02, 4.98], "copy": [5.01, 4.99, 5.00], "bad": [5.30, 5.33, 5.28]}
    pairs = {(p.a, p.b): p for p in stats.pairwise(values)}
    assert pairs[("good", "bad")].detected and pairs[("copy", "bad")].detected
    assert not pairs[("good", "copy")].detected
    assert all(p.p_holm >= p.p for p in pairs.values())


def test_values_equal_up_to_float_rounding_count_as_constant_and_raise_no_warning(recwarn):
    # the same weights evaluated twice can differ in the last bit: that is no difference between recipes
    assert stats.welch([0.5, 0.5, 0.5 + 1e-16], [0.5, 0.5, 0.5]) == (0.0, 1.0)
    t, p = stats.welch([1.0, 1.1, 1.0], [2.0, 2.0, 2.0])  # one constant sample: a normal test
    assert t < 0 and 0 < p < 0.05
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
