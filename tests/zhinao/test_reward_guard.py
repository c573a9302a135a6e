"""The reward-hacking guards: the adaptive KL controller and the checked-vs-RM verdict."""

import pytest

from zhinao.reward_guard import KLController, verdict


def test_fixed_beta_without_a_target():
    kl = KLController(coef=0.05)
    assert [kl.update(k, 32) for k in (0.1, 5.0, 50.0)] == [0.05, 0.05, 0.05]


def test_beta_rises_past_the_target_falls_inside_it_and_each_move_is_clipped():
    kl = KLController(coef=0.1, target=1.0, horizon=100)
    assert kl.update(3.0, 50) == pytest.approx(0.1 * (1 + 0.2 * 0.5))  # error clipped to +0.2
    up = kl.coef
    assert kl.update(0.9, 50) == pytest.approx(up * (1 - 0.1 * 0.5))
    assert kl.update(0.0, 100) == pytest.approx(up * (1 - 0.1 * 0.5) * 0.8)  # clipped to -0.2


def test_verdicts():
    ok = verdict(rm=(0.05, 2.2), checked=(0.55, 0.8), where="held-out prompts")
    assert ok["checked_rose_with_rm"] and ok["sentence"].startswith("the checked reward rose with the RM score")
    hacked = verdict(rm=(0.05, 2.2), checked=(0.55, 0.55), where="held-out prompts")
    assert not hacked["checked_rose_with_rm"] and "did NOT rise" in hacked["sentence"]
    assert "RM 0.050 -> 2.200, checked 0.550 -> 0.550" in hacked["sentence"]
    flat = verdict(rm=(1.0, 0.5), checked=(0.2, 0.4), where="training steps")
    assert not flat["rm_rose"] and flat["checked_rose"] and "RM score did not rise" in flat["sentence"]
    within = verdict(rm=(0.3, 1.7), checked=(0.275, 0.33), where="held-out prompts", noise=0.05)
    assert not within["checked_rose_with_rm"] and "did NOT rise" in within["sentence"]
    assert "checked 0.275 -> 0.330 (+-0.100 at 2 s.e.)" in within["sentence"]
    clear = verdict(rm=(0.3, 1.7), checked=(0.275, 0.40), where="held-out prompts", noise=0.05)
    assert clear["checked_rose_with_rm"] and clear["checked_noise"] == 0.05
    rules_only = verdict(rm=None, checked=(0.2, 0.4), where="training steps")
    assert rules_only["checked_rose"] and "rm_before" not in rules_only and "no reward model" in rules_only["sentence"]
