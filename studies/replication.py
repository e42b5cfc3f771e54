"""Expansions as the unit of replication: per-expansion values and t intervals over expansions.

A grid with `expansion_seeds` expands every cell once per seed (cell `<name>_e<seed>`), each
retrained at a few training seeds. One expansion's value for a contrast a - b is the mean over its
training seeds of the same-seed difference; the interval is Student t over the expansions, so it
covers expansion noise as well as training noise (an interval over training seeds of one
expansion covers only the latter). The original-only runs have no expansion: one set of runs serves
every expansion, so a contrast against them is the mean over expansions minus their mean over
training seeds, with a Welch interval in which the spread of both sides enters.
"""
import numpy as np

from distdiff.results import fmt_interval
from distdiff.stats import paired_difference, welch_difference
from studies.grid import fmt_number, nan_for_none, none_for_nan, seed_values

# Accuracy contrasts: test at the last epoch, val at the last epoch (what a selection on val
# reads), and test at the best val epoch.
CONTRAST_METRICS = ("last_acc", "last_val_acc", "test_at_best_val")
# The "interval" label of a contrast with the original-only runs (its degrees of freedom are not n - 1).
WELCH = "Welch t"
# Per-expansion mechanism values (means over the expansion's images), averaged over expansions.
MECHANISM_KEYS = ("energy_before", "energy_after", "energy_drop_frac", "pixel_change_vs_control",
                  "pixel_change_vs_source", "fid_val", "precision", "recall", "coverage", "guide_agreement")
HEADER = ("Unit of replication: the expansion. Each value is a mean over expansions of that expansion's "
          "mean same-seed difference over its training seeds; intervals are Student t over expansions "
          "(n = number of expansions). A contrast with `original` (one set of original-only runs for "
          "every expansion) is the mean over expansions minus the mean of those runs, with a Welch t "
          "interval, so the original-only runs' own spread enters it.")


def expansion_difference(dir_a, dir_b, seeds, metric):
    """Mean over the training seeds both runs finished of a - b, or None when none did."""
    a, b = seed_values(dir_a, seeds), seed_values(dir_b, seeds)
    common = [s for s in seeds if metric in a.get(s, {}) and metric in b.get(s, {})]
    return float(np.mean([a[s][metric] - b[s][metric] for s in common])) if common else None


def over_expansions(values, confidence=0.95):
    """{mean, low, high, n} of per-expansion values (None entries dropped), t interval."""
    kept = {i: v for i, v in enumerate(values) if v is not None}
    result = paired_difference(kept, dict.fromkeys(kept, 0.0), confidence)
    return {key: none_for_nan(result[key]) for key in ("mean", "low", "high")} | {"n": result["n"]}


def expansion_mean(exp_dir, seeds, metric):
    """Mean of `metric` over the training seeds the expansion's runs finished, or None."""
    values = [r[metric] for r in seed_values(exp_dir, seeds).values() if metric in r]
    return float(np.mean(values)) if values else None


def against_reused(dirs, reused_dir, seeds, metric, confidence, sign):
    """sign * (mean over expansions - mean of the reused runs) with a Welch interval."""
    per_expansion = [expansion_mean(d, seeds, metric) for d in dirs]
    runs = [r[metric] for r in seed_values(reused_dir, seeds).values() if metric in r]
    result = welch_difference(per_expansion, runs, confidence)
    low, high = sorted((sign * result["low"], sign * result["high"]))
    return {"mean": none_for_nan(sign * result["mean"]), "low": none_for_nan(low), "high": none_for_nan(high),
            "n": result["n"]}


def contrast_row(name, dirs_a, dirs_b, rows_a, rows_b, seeds, confidence=0.95, primary=False, reused=None):
    """One contrast a - b over expansions: accuracy metrics from the runs (dirs per expansion,
    in the same order for a and b), and the mechanism's energy after the step from the rows.
    `reused` ("a" or "b") names a side that is one set of runs for every expansion (the
    original-only runs): that side's accuracy is compared by a Welch interval, not paired."""
    row = {"contrast": name, "primary": primary, "confidence": confidence,
           "interval": f"{WELCH}: mean over expansions vs the {reused} side's runs" if reused
           else "paired t over expansions"}
    for metric in CONTRAST_METRICS:
        if reused == "b":
            summary = against_reused(dirs_a, dirs_b[0], seeds, metric, confidence, 1)
        elif reused == "a":
            summary = against_reused(dirs_b, dirs_a[0], seeds, metric, confidence, -1)
        else:
            summary = over_expansions([expansion_difference(a, b, seeds, metric) for a, b in zip(dirs_a, dirs_b)],
                                      confidence)
        for key, value in summary.items():
            row[f"d_{metric}" + ("" if key == "mean" else f"_{key}")] = value
    for key in ("energy_after", "energy_drop_frac", "fid_val", "guide_agreement"):
        values = [None if a is None or b is None or a.get(key) is None or b.get(key) is None else a[key] - b[key]
                  for a, b in zip(rows_a, rows_b)]
        stats = over_expansions(values, confidence)
        row[f"d_{key}"], row[f"d_{key}_low"], row[f"d_{key}_high"] = stats["mean"], stats["low"], stats["high"]
    return row


def side_of_zero(contrast):
    """The committed rule's reading of one contrast: "above" when its intervals on test last_acc
    and on last-epoch val are both above zero, "below" when both are below, else "neither"
    (None when an interval is missing)."""
    lows = [contrast.get("d_last_acc_low"), contrast.get("d_last_val_acc_low")]
    highs = [contrast.get("d_last_acc_high"), contrast.get("d_last_val_acc_high")]
    if None in lows or None in highs:
        return None
    if min(lows) > 0:
        return "above"
    if max(highs) < 0:
        return "below"
    return "neither"


def group_accuracy(dirs, seeds):
    """{metric: mean over expansions of the expansion's mean over its finished training seeds}."""
    means = {}
    for metric in CONTRAST_METRICS:
        per_expansion = [m for m in (expansion_mean(d, seeds, metric) for d in dirs) if m is not None]
        means[metric] = float(np.mean(per_expansion)) if per_expansion else None
    return means


def mechanism_summary(rows):
    """Mean over expansions of each mechanism value (blank where no expansion has it)."""
    summary = {}
    for key in MECHANISM_KEYS:
        values = [r.get(key) for r in rows if r is not None and r.get(key) is not None]
        summary[key] = float(np.mean(values)) if values else None
    return summary


def fmt(mean, low=None, high=None, digits=2):
    """'+1.23 [+0.10, +2.36]', '+1.23' without an interval, '-' when blank (None or nan)."""
    return fmt_interval(nan_for_none(mean), nan_for_none(low), nan_for_none(high), digits)


def contrast_table(rows):
    """Markdown: one line per contrast."""
    lines = [HEADER, "", "| contrast | level | n expansions | Δ test last_acc | Δ last-epoch val | Δ test_at_best_val | "
             "Δ energy after | Δ energy dropped | Δ FID to val | Δ guide agrees |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        acc = [fmt(row[f"d_{m}"], row[f"d_{m}_low"], row[f"d_{m}_high"]) for m in CONTRAST_METRICS]
        mech = [fmt(row["d_energy_after"], row["d_energy_after_low"], row["d_energy_after_high"], 4),
                fmt(row["d_energy_drop_frac"], digits=3), fmt(row["d_fid_val"]), fmt(row["d_guide_agreement"], digits=3)]
        level = f"{row['confidence']:.0%}" + (" (primary)" if row["primary"] else "")
        lines.append(f"| {row['contrast']} | {level} | {row['d_last_acc_n']} | " + " | ".join(acc + mech) + " |")
    return "\n".join(lines)


def mechanism_table(groups):
    """Markdown: one line per cell group with its accuracy and mechanism means over expansions.
    `groups` is [(name, n expansions, {accuracy means}, mechanism summary)]."""
    lines = ["| cell | n expansions | test last_acc | last-epoch val | energy before → after | energy dropped | "
             "Δpx vs unguided | Δpx vs source | FID to val | guide agrees |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, n, acc, mech in groups:
        energy = "-" if mech["energy_before"] is None else f"{mech['energy_before']:.4f} → {mech['energy_after']:.4f}"
        cells = [name, str(n), fmt_number(acc.get("last_acc"), "{:.2f}"),
                 fmt_number(acc.get("last_val_acc"), "{:.2f}"), energy,
                 fmt_number(mech["energy_drop_frac"], "{:.0%}"),
                 fmt_number(mech["pixel_change_vs_control"], "{:.4f}"),
                 fmt_number(mech["pixel_change_vs_source"], "{:.4f}"), fmt_number(mech["fid_val"], "{:.2f}"),
                 fmt_number(mech["guide_agreement"], "{:.1%}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
