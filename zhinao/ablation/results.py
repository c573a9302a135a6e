"""The ablation results: statistics over every run's evaluations, as JSON, markdown and PNGs.

<ablation root>/runs/<run>.json        one run's evaluations (evaluate.evaluate_run)
<ablation root>/report/report.json     statistics (stats.analyse) + per-run metric values
<ablation root>/report/report.md      the tables `zhinao-k8s ablation report` prints
<ablation root>/report/*.png           valid/train loss curves with seed bands, bars with CIs
"""

import json
import math
from dataclasses import dataclass

import numpy as np

from zhinao.ablation import plots, stats
from zhinao.ablation.sft_eval import sft_metrics
from zhinao.storage import ObjectStore


@dataclass
class RunResult:
    recipe: str
    index: int
    seed: int
    name: str
    result: dict


def run_metrics(result: dict) -> dict[str, float]:
    """The flat metric table of one run: valid_loss, train_loss, bench/<task>/<rule>, bench/avg, sft/* (sft_eval.py)."""
    metrics = {}
    if "valid_loss" in result:
        metrics["valid_loss"] = result["valid_loss"]
    metrics["train_loss"] = result["train_loss"]
    bench = result.get("benchmarks") or {}
    headline = []
    for task, r in bench.items():
        for rule, v in r["scores"].items():
            metrics[f"bench/{task}/{rule}"] = v
        headline.append(r["scores"].get("content_norm", r["scores"].get("contains", 0.0)))
    if headline:
        metrics["bench/avg"] = float(np.mean(headline))
    if "sft" in result:
        metrics |= sft_metrics(result["sft"])
    return metrics


def metric_values(runs: list[RunResult], recipes: list[str]) -> dict[str, dict[str, list[float]]]:
    """values[metric][recipe] = per-seed values, in recipe order; metrics every run has."""
    per_run = [(r.recipe, run_metrics(r.result)) for r in runs]
    names = [m for m in per_run[0][1] if all(m in mv for _, mv in per_run)] if per_run else []
    return {
        m: {rec: [mv[m] for r, mv in per_run if r == rec] for rec in recipes if any(r == rec for r, _ in per_run)}
        for m in names
    }


def build_results(
    name: str,
    runs: list[RunResult],
    recipes: list[str],
    *,
    alpha: float = stats.ALPHA,
    max_cv: float = stats.MAX_CV,
    meta: dict | None = None,
) -> dict:
    values = metric_values(runs, recipes)
    analysis = stats.analyse(values, alpha=alpha, max_cv=max_cv)
    for metric, by_recipe in values.items():
        for recipe, vals in by_recipe.items():
            analysis["metrics"][metric]["recipes"][recipe]["values"] = vals
    return {
        "ablation": name,
        "recipes": recipes,
        "runs": [{"name": r.name, "recipe": r.recipe, "index": r.index, "seed": r.seed} for r in runs],
        **(meta or {}),
        **analysis,
    }


def write_results(out: ObjectStore, report: dict, runs: list[RunResult]) -> None:
    """report.json, report.md and the plots under `out` (the ablation's report/ prefix)."""
    recipes = report["recipes"]
    valid = {r: [x.result.get("valid_curve", []) for x in runs if x.recipe == r] for r in recipes}
    if any(any(c) for c in valid.values()):
        out.put_bytes(
            "valid_loss.png",
            plots.curves_png(
                valid,
                key="valid_loss",
                title=f"{report['ablation']}: validation loss (held-out topics)",
                ylabel="valid loss (nats/token)",
            ),
        )
    train = {r: [x.result.get("train_curve", []) for x in runs if x.recipe == r] for r in recipes}
    out.put_bytes(
        "train_loss.png",
        plots.curves_png(train, key="loss", title=f"{report['ablation']}: training loss", ylabel="train loss"),
    )
    pngs = []
    for metric, m in report["metrics"].items():
        key = "bars-" + metric.replace("/", "-") + ".png"
        out.put_bytes(key, plots.bars_png(metric, m["recipes"]))
        pngs.append(key)
    report = {**report, "plots": ["valid_loss.png", "train_loss.png", *pngs]}
    out.put_bytes("report.json", json.dumps(report, indent=2, default=_json_num).encode())
    out.put_bytes("report.md", markdown(report).encode())


def _json_num(x):
    return str(x)


def fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def chance_line(report: dict) -> str:
    """Read a table of many metrics with the chance of a false detection in mind."""
    detected = sum(1 for q in report["ranking"] if q["detected_pairs"])
    return (
        f"{detected} of {len(report['ranking'])} metrics show a detected pair; about "
        f"{report['alpha'] * len(report['ranking']):.1f} would by chance alone."
    )


def markdown(report: dict) -> str:
    lines = [f"# Ablation `{report['ablation']}`", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    lines += [
        f"Recipes: {', '.join(report['recipes'])}; {len(report['runs'])} runs. A difference is *detected* when "
        f"Welch's p, Holm-adjusted over the pairs of its metric, is < {report['alpha']}; effect size d = "
        f"difference / pooled seed std. {chance_line(report)}",
        "",
    ]
    lines += [
        "## Metric quality (most useful first)",
        "",
        "| metric | seed std | CV | sensitivity | ANOVA p | detected pairs | flags |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in report["ranking"]:
        lines.append(
            f"| {q['metric']} | {fmt(q['noise'])} | {fmt(q['cv'], 3)} | {fmt(q['sensitivity'], 2)} | {fmt(q['anova_p'], 3)} "
            f"| {q['detected_pairs']}/{q['pairs']} | {', '.join(q['flags']) or 'ok'} |"
        )
    lines += ["", "## Per recipe (mean, seed std, 95% bootstrap CI)", ""]
    for metric, m in report["metrics"].items():
        lines += [f"### {metric}", "", "| recipe | mean | std | 95% CI | seeds |", "|---|---|---|---|---|"]
        for recipe, s in m["recipes"].items():
            lines.append(
                f"| {recipe} | {fmt(s['mean'])} | {fmt(s['std'])} | [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}] "
                f"| {', '.join(fmt(v) for v in s.get('values', []))} |"
            )
        lines += [
            "",
            "| a - b | difference | effect size d | Welch p | Holm p | detected |",
            "|---|---|---|---|---|---|",
        ]
        for p in m["pairs"]:
            lines.append(
                f"| {p['a']} - {p['b']} | {fmt(p['diff'])} | {fmt(p['effect_size'], 2)} | {fmt(p['p'], 3)} "
                f"| {fmt(p['p_holm'], 3)} | {'yes' if p['detected'] else 'no'} |"
            )
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"][:2]] + [""]
    return "\n".join(lines)
