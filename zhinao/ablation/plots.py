"""PNG plots of an ablation: validation-loss curves with seed bands, metric bars with CIs."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, list[list[dict]]], *, key: str, title: str, ylabel: str) -> bytes:
    """curves[recipe] = one curve per seed ([{step, <key>}]); the mean line with a min-max seed band."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for recipe, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        steps = sorted(set.intersection(*[{p["step"] for p in r} for r in runs]))
        if not steps:
            continue
        ys = np.array([[next(p[key] for p in r if p["step"] == s) for s in steps] for r in runs])
        (line,) = ax.plot(steps, ys.mean(0), label=f"{recipe} (n={len(runs)})")
        ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def bars_png(metric: str, summaries: dict[str, dict]) -> bytes:
    """One bar per recipe: the seed mean with its bootstrap CI, and the seed values as dots."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(summaries), 3.6))
    names = list(summaries)
    means = [summaries[n]["mean"] for n in names]
    err = np.array(
        [[summaries[n]["mean"] - summaries[n]["ci_low"], summaries[n]["ci_high"] - summaries[n]["mean"]] for n in names]
    ).T
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color="#8fb3d9")
    for i, n in enumerate(names):
        vals = summaries[n].get("values", [])
        ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
    lo = min(min(summaries[n]["ci_low"], *summaries[n].get("values", [summaries[n]["ci_low"]])) for n in names)
    hi = max(max(summaries[n]["ci_high"], *summaries[n].get("values", [summaries[n]["ci_high"]])) for n in names)
    pad = (hi - lo) * 0.3 or abs(hi) * 0.05 or 0.05
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_title(metric, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
