"""Guards against reward hacking in online RL (pure: numbers in, numbers and a sentence out).

A learned reward model can be pleased by responses that are not better: the demo once saw the RM
score climb from 0.05 to 2.2 while the rule-checked reward barely moved. Two guards: hold the
policy near the reference (a KL controller, and an early stop past a KL ceiling), and say plainly
whether the checked reward rose with the RM score.
"""

from dataclasses import dataclass


@dataclass
class KLController:
    """The KL penalty beta of the next step.

    Without a target, beta stays at its start. With one, beta follows the adaptive rule of
    Ziegler et al. (2019): after each step, beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon,
    where KL is the step's mean KL per response and n the prompts it rolled out; beta rises while
    the policy drifts past the target and falls while it stays inside.
    """

    coef: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * n / self.horizon
        return self.coef


def _delta(before: float, after: float) -> str:
    return f"{before:.3f} -> {after:.3f}"


def verdict(
    *, rm: tuple[float, float] | None, checked: tuple[float, float], where: str, noise: float | None = None
) -> dict:
    """Whether the checked (rule) reward rose with the reward model's score, as a record and a sentence.

    `rm`/`checked`: (before, after) means; `rm` None when no reward model scored. `noise`: the
    standard error of the checked reward's change, when known; a change within two of them does not
    count as a rise (on the demo's 160 held-out responses that is about +-0.1). `where` names what
    the means were taken over (held-out prompts, or the first and last training steps).
    """
    change = checked[1] - checked[0]
    checked_rose = change > (2 * noise if noise is not None else 0.0)
    shown = f"checked {_delta(*checked)}" + (f" (+-{2 * noise:.3f} at 2 s.e.)" if noise is not None else "")
    record = {
        "where": where,
        "checked_before": checked[0],
        "checked_after": checked[1],
        "checked_noise": noise,
        "checked_rose": checked_rose,
    }
    if rm is None:
        return {**record, "sentence": f"{shown} ({where}; no reward model)"}
    rm_rose = rm[1] > rm[0]
    record.update(rm_before=rm[0], rm_after=rm[1], rm_rose=rm_rose, checked_rose_with_rm=rm_rose and checked_rose)
    numbers = f"RM {_delta(*rm)}, {shown}; {where}"
    if rm_rose and checked_rose:
        sentence = f"the checked reward rose with the RM score ({numbers})"
    elif rm_rose:
        sentence = (
            f"the checked reward did NOT rise with the RM score ({numbers}): the policy may be exploiting "
            "the reward model; lower rmWeight, raise klCoef or set klTarget"
        )
    else:
        sentence = f"the RM score did not rise ({numbers})"
    return {**record, "sentence": sentence}
