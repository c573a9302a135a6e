"""Statistics of an ablation: is a difference between two recipes larger than seed noise?

Pure numpy/scipy. Every function takes per-seed values of one metric (one value per seed run).

Definitions (docs/ablation.md repeats them):
- mean, `std` = sample standard deviation over seeds (ddof=1).
- `bootstrap_ci`: percentile bootstrap of the mean (seeded, so a report is reproducible). With 3
  seeds it is narrow and optimistic; the Welch test below is the decision rule, the CI a picture.
- `pooled_std` = sqrt(((n1-1) s1^2 + (n2-1) s2^2) / (n1+n2-2)); `effect_size` (Cohen's d) =
  (mean1 - mean2) / pooled_std.
- `welch`: scipy.stats.ttest_ind(equal_var=False). Two samples with zero variance are not
  different if their means are equal (p=1).
- `holm`: the pairs of one metric are one family of tests (k recipes give k(k-1)/2 pairs), so each
  pair's p is Holm-adjusted within its metric, and a pair is *detected* when the adjusted p < ALPHA:
  the chance that a metric shows any false detection stays below ALPHA however many recipes there
  are. Across M metrics about M x ALPHA metrics can still show one by chance (the report says so).
- Per metric, over all recipes: `noise` = sqrt(mean of the per-recipe seed variances) (stability),
  `cv` = noise / |grand mean|, and `sensitivity` = std of the recipe means / (noise / sqrt(n)),
  the between-recipe spread in units of the standard error of one recipe's mean (= sqrt of the
  one-way ANOVA F statistic; about 1 when the recipes do not differ). `anova_p` from
  scipy.stats.f_oneway.
"""

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st

ALPHA = 0.05
"""A pairwise difference is detected when its Holm-adjusted Welch p-value is below this."""

MAX_CV = 0.10
"""A metric whose seed noise exceeds 10% of its mean is flagged `unstable`."""

BOOTSTRAP_SAMPLES = 5000
CI_LEVEL = 0.95


def _arr(values) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError("need a non-empty 1-D sequence of per-seed values")
    return a


def mean(values) -> float:
    return float(np.mean(_arr(values)))


def std(values) -> float:
    """Sample standard deviation over seeds (ddof=1); 0 for a single value."""
    a = _arr(values)
    return float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


def bootstrap_ci(
    values, *, level: float = CI_LEVEL, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    a = _arr(values)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(samples, len(a)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def pooled_std(a, b) -> float:
    a, b = _arr(a), _arr(b)
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return 0.0
    return float(math.sqrt(((len(a) - 1) * std(a) ** 2 + (len(b) - 1) * std(b) ** 2) / dof))


def effect_size(a, b) -> float:
    """Cohen's d of mean(a) - mean(b); +-inf when there is a difference but no noise, 0 when neither."""
    diff = mean(a) - mean(b)
    s = pooled_std(a, b)
    if s == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / s


def _constant(a: np.ndarray) -> bool:
    """Equal up to float rounding (a metric recomputed from the same weights can differ in the last bit)."""
    return bool(np.all(np.abs(a - a[0]) <= 1e-12 * max(1.0, abs(float(a[0])))))


def welch(a, b) -> tuple[float, float]:
    """(t, two-sided p) of Welch's unequal-variance t-test."""
    a, b = _arr(a), _arr(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    if _constant(a) and _constant(b):
        # scipy returns nan here; equal constants are not different, unequal ones certainly are.
        diff = mean(a) - mean(b)
        return (0.0, 1.0) if _constant(np.array([mean(a), mean(b)])) else (math.copysign(math.inf, diff), 0.0)
    with warnings.catch_warnings():
        # scipy warns of "catastrophic cancellation" whenever one sample is constant; its variance
        # is then exactly 0 and the test is right.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = st.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


@dataclass
class Summary:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(values, *, seed: int = 0) -> Summary:
    a = _arr(values)
    lo, hi = bootstrap_ci(a, seed=seed)
    return Summary(len(a), mean(a), std(a), lo, hi)


@dataclass
class Pair:
    a: str
    b: str
    diff: float
    """mean(a) - mean(b)."""
    effect_size: float
    t: float
    p: float
    """Welch's two-sided p-value of this pair alone."""
    p_holm: float
    """p adjusted for the other pairs of the same metric (Holm); `detected` means p_holm < alpha."""
    detected: bool


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (nan stays nan and is not counted)."""
    order = [i for i in sorted(range(len(pvalues)), key=lambda i: pvalues[i]) if not math.isnan(pvalues[i])]
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pairwise(by_recipe: dict[str, list[float]], *, alpha: float = ALPHA) -> list[Pair]:
    """Every pair of recipes (in recipe order), Holm-adjusted within this family."""
    names = list(by_recipe)
    tests = [(a, b, *welch(by_recipe[a], by_recipe[b])) for i, a in enumerate(names) for b in names[i + 1 :]]
    adjusted = holm([p for *_, p in tests])
    return [
        Pair(
            a,
            b,
            mean(by_recipe[a]) - mean(by_recipe[b]),
            effect_size(by_recipe[a], by_recipe[b]),
            t,
            p,
            ph,
            bool(ph < alpha) if not math.isnan(ph) else False,
        )
        for (a, b, t, p), ph in zip(tests, adjusted)
    ]


def compare(name_a: str, a, name_b: str, b, *, alpha: float = ALPHA) -> Pair:
    """One pair on its own (a family of one: p_holm = p)."""
    return pairwise({name_a: a, name_b: b}, alpha=alpha)[0]


@dataclass
class MetricQuality:
    metric: str
    noise: float
    """sqrt of the mean per-recipe seed variance."""
    cv: float
    sensitivity: float
    anova_p: float
    detected_pairs: int
    pairs: int
    flags: list[str]


def metric_quality(
    metric: str,
    by_recipe: dict[str, list[float]],
    pairs: list[Pair] | None = None,
    *,
    alpha: float = ALPHA,
    max_cv: float = MAX_CV,
) -> MetricQuality:
    """Stability and sensitivity of one metric across recipes; flags `unstable`, `insensitive`, `constant`."""
    pairs = pairwise(by_recipe, alpha=alpha) if pairs is None else pairs
    groups = {k: _arr(v) for k, v in by_recipe.items()}
    variances = [std(g) ** 2 for g in groups.values()]
    noise = float(math.sqrt(np.mean(variances)))
    grand = float(np.mean(np.concatenate(list(groups.values()))))
    cv = noise / abs(grand) if grand else (0.0 if noise == 0 else math.inf)
    means = np.array([g.mean() for g in groups.values()])
    spread = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
    n = float(np.mean([len(g) for g in groups.values()]))
    if noise == 0:
        sensitivity = 0.0 if spread == 0 else math.inf
    else:
        sensitivity = spread / (noise / math.sqrt(n))
    if len(groups) > 1 and all(len(g) > 1 for g in groups.values()) and noise > 0:
        anova_p = float(st.f_oneway(*groups.values()).pvalue)
    else:
        anova_p = 1.0 if spread == 0 else 0.0
    flags = []
    if noise == 0 and spread == 0:
        flags.append("constant")
    if cv > max_cv:
        flags.append("unstable")
    if not any(p.detected for p in pairs) or anova_p >= alpha:
        flags.append("insensitive")
    return MetricQuality(metric, noise, cv, sensitivity, anova_p, sum(p.detected for p in pairs), len(pairs), flags)


def rank_metrics(qualities: list[MetricQuality]) -> list[MetricQuality]:
    """Most useful first: unflagged before flagged, then by sensitivity (desc), then by cv (asc)."""

    def key(q: MetricQuality):
        sens = q.sensitivity if not math.isnan(q.sensitivity) else -1.0
        return (len(q.flags), -sens, q.cv)

    return sorted(qualities, key=key)


def analyse(values: dict[str, dict[str, list[float]]], *, alpha: float = ALPHA, max_cv: float = MAX_CV) -> dict:
    """values[metric][recipe] = per-seed values -> the JSON-ready statistics of an ablation."""
    out: dict = {"alpha": alpha, "max_cv": max_cv, "metrics": {}, "ranking": []}
    qualities = []
    for metric, by_recipe in values.items():
        summaries = {r: asdict(summarize(v, seed=i)) for i, (r, v) in enumerate(by_recipe.items())}
        pairs = pairwise(by_recipe, alpha=alpha)
        q = metric_quality(metric, by_recipe, pairs, alpha=alpha, max_cv=max_cv)
        qualities.append(q)
        out["metrics"][metric] = {"recipes": summaries, "pairs": [asdict(p) for p in pairs], "quality": asdict(q)}
    out["ranking"] = [asdict(q) for q in rank_metrics(qualities)]
    return out
