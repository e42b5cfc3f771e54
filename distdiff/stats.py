"""Aggregation over seeds: mean ± std, and paired differences with t intervals."""
import math

import numpy as np


def mean_std(values):
    """(mean, sample std with ddof=1, n); std is nan for a single value, all nan when empty."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, 0
    std = values.std(ddof=1) if len(values) > 1 else math.nan
    return float(values.mean()), float(std), len(values)


def paired_difference(treated, control, confidence=0.95):
    """Mean of per-seed differences treated-control with a Student-t confidence interval.

    `treated` and `control` map seed -> value; only seeds present in both are paired.
    Returns dict(mean, low, high, n, seeds).
    """
    seeds = sorted(set(treated) & set(control))
    diffs = np.array([treated[s] - control[s] for s in seeds], dtype=float)
    n = len(diffs)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "seeds": []}
    mean = float(diffs.mean())
    if n == 1:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1, "seeds": seeds}
    if not diffs.std():  # every seed moved by the same amount: scipy's interval would be nan
        return {"mean": mean, "low": mean, "high": mean, "n": n, "seeds": seeds}
    from scipy import stats  # about 1 s to import: only where an interval is computed

    interval = stats.ttest_rel([treated[s] for s in seeds], [control[s] for s in seeds]).confidence_interval(confidence)
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high), "n": n, "seeds": seeds}


def welch_difference(treated, control, confidence=0.95):
    """Mean of `treated` minus mean of `control` (lists of values, unpaired) with a Welch t
    interval: for a control that is one set of runs reused against every treated unit (the
    original-only runs against each expansion), so that its own spread enters the interval.
    Returns dict(mean, low, high, n) with n the number of treated values."""
    a = np.asarray([v for v in treated if v is not None], dtype=float)
    b = np.asarray([v for v in control if v is not None], dtype=float)
    if len(a) == 0 or len(b) == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": len(a)}
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:  # a spread is unknown: no interval
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": len(a)}
    if not a.std() and not b.std():
        return {"mean": mean, "low": mean, "high": mean, "n": len(a)}
    from scipy import stats

    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high), "n": len(a)}


def fmt_mean_std(mean, std, digits=2):
    """'83.09 ± 0.41' (or just the mean when std is undefined)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
