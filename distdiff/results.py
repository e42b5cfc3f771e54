"""Collect results.json files of training runs into per-experiment rows."""
import csv
import fnmatch
import io
import json
from pathlib import Path

from distdiff.stats import fmt_mean_std, mean_std, paired_difference

METRICS = ("best_acc", "last_acc", "test_at_best_val")


def seed_dirs(exp_dir):
    """The seed<N> children of an experiment dir, sorted by N."""
    dirs = [p for p in Path(exp_dir).glob("seed*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[4:]))


def find_experiments(root):
    """Experiment dirs (those with seed<N> children) at or below `root`, sorted."""
    root = Path(root)
    if seed_dirs(root):
        return [root]
    return sorted({p.parent for p in root.rglob("seed*") if p.is_dir() and seed_dirs(p.parent)})


def experiment_name(exp_dir, root=None):
    """The experiment's name in tables: its path below `root`, else its own dir name."""
    return str(Path(exp_dir).relative_to(root)) if root and Path(exp_dir) != Path(root) else Path(exp_dir).name


def select_experiments(experiments, root, patterns):
    """Experiments whose table name matches any of the shell-style `patterns` (all if none)."""
    if not patterns:
        return list(experiments)
    return [exp for exp in experiments
            if any(fnmatch.fnmatchcase(experiment_name(exp, root), pat) for pat in patterns)]


def load_seed_results(exp_dir, seeds=None):
    """({seed: results dict} of complete seeds, [names of incomplete seed dirs]), optionally
    restricted to the given seeds."""
    done, incomplete = {}, []
    for run in seed_dirs(exp_dir):
        if seeds is not None and int(run.name[4:]) not in seeds:
            continue
        path = run / "results.json"
        if path.is_file():
            done[int(run.name[4:])] = json.loads(path.read_text())
        else:
            incomplete.append(run.name)
    return done, incomplete


def experiment_row(exp_dir, root=None, seeds=None):
    """One aggregated row: mean/std/n per metric plus the incomplete-seed count."""
    done, incomplete = load_seed_results(exp_dir, seeds)
    row = {"experiment": experiment_name(exp_dir, root), "n": len(done), "incomplete": len(incomplete),
           "seeds": ",".join(str(s) for s in sorted(done))}
    for metric in METRICS:
        mean, std, _ = mean_std(r.get(metric) for r in done.values())
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
    return row


def is_run_dir(path):
    """A single training run's dir (what --run_dir / the authors' --checkpoint name): its args.yaml
    and summary.csv, or its results.json."""
    path = Path(path)
    return (path / "results.json").is_file() or ((path / "args.yaml").is_file() and (path / "summary.csv").is_file())


def run_row(run_dir):
    """One run dir as a row: its results.json, or how far an unfinished run got."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        with open(run_dir / "summary.csv") as f:
            epochs = sum(1 for _ in csv.DictReader(f))
        return {"run": run_dir.name, "status": f"incomplete ({epochs} epochs so far)"}
    results = json.loads(path.read_text())
    return {"run": run_dir.name, "status": "done", **{k: results.get(k) for k in
                                                       ("seed", "epochs", "n_train", *METRICS, "best_val_acc")}}


def run_table(row):
    """A run's row as a two-column markdown table."""
    return "\n".join(["| run | " + row["run"] + " |", "|---|---|"] +
                      [f"| {key} | {'-' if value is None else value} |" for key, value in row.items() if key != "run"])


def seed_rows(exp_dir, seeds=None):
    """One row per seed run (complete or not)."""
    done, incomplete = load_seed_results(exp_dir, seeds)
    rows = [{"experiment": Path(exp_dir).name, "seed": s, **{m: r.get(m) for m in METRICS}}
            for s, r in sorted(done.items())]
    rows += [{"experiment": Path(exp_dir).name, "seed": name, "status": "incomplete"}
             for name in incomplete]
    return rows


def markdown_table(rows):
    """Aggregated rows as a markdown table; incomplete seeds are flagged, not averaged."""
    lines = ["| experiment | n | best_acc (paper) | last_acc | test_at_best_val | incomplete |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [fmt_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in METRICS]
        flag = f"**{row['incomplete']}**" if row["incomplete"] else "0"
        lines.append(f"| {row['experiment']} | {row['n']} | " + " | ".join(cells) + f" | {flag} |")
    return "\n".join(lines)


def to_csv(rows):
    """Rows (dicts) as CSV text with the union of their keys as header."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def add_paired(rows, experiments, baseline, metrics=("last_acc", "test_at_best_val"), seeds=None):
    """Add paired (same-seed) differences against the `baseline` experiment to each row."""
    by_name = {row["experiment"]: exp for row, exp in zip(rows, experiments)}
    if baseline not in by_name:
        return False
    base, _ = load_seed_results(by_name[baseline], seeds)
    for row, exp in zip(rows, experiments):
        done, _ = load_seed_results(exp, seeds)
        for metric in metrics:
            diff = paired_difference({s: r[metric] for s, r in done.items() if metric in r},
                                     {s: r[metric] for s, r in base.items() if metric in r})
            row[f"d_{metric}"], row[f"d_{metric}_low"], row[f"d_{metric}_high"] = \
                diff["mean"], diff["low"], diff["high"]
            row[f"d_{metric}_n"] = diff["n"]
    return True


def paired_table(rows, baseline, metrics=("last_acc", "test_at_best_val")):
    """Markdown table of paired differences vs the baseline with 95 % t intervals."""
    lines = ["| experiment | " + " | ".join(f"Δ{m} vs {baseline} [95% CI]" for m in metrics) + " | pairs |",
             "|---|" + "---|" * len(metrics) + "---|"]
    for row in rows:
        cells = [fmt_interval(row[f"d_{m}"], row[f"d_{m}_low"], row[f"d_{m}_high"]) for m in metrics]
        lines.append(f"| {row['experiment']} | " + " | ".join(cells) + f" | {row[f'd_{metrics[0]}_n']} |")
    return "\n".join(lines)


def fmt_interval(mean, low, high, digits=2):
    """'+1.20 [-0.30, +2.70]'; '+1.20' without an interval, '-' without a mean (nan)."""
    if mean != mean:  # nan
        return "-"
    if low != low:
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def authors_summary(path, multi=False):
    """The lines the authors' parse_logs.py prints for `path`: "Accuracy of <file> is <value>" for
    each results.yaml (its best_accuracy; with `multi`, those of the folders directly below
    `path`, here in sorted order), then the mean ± population std (numpy's default, ddof=0)."""
    import os

    import numpy as np
    import yaml

    folders = sorted(os.listdir(path)) if multi else [""]
    lines, values = [], []
    for name in folders:
        file_path = os.path.join(str(path), name, "results.yaml") if multi else os.path.join(str(path), "results.yaml")
        if os.path.exists(file_path):
            value = (yaml.safe_load(Path(file_path).read_text()) or {}).get("best_accuracy")
            lines.append(f"Accuracy of {file_path} is {value}")
            if value is not None:
                values.append(value)
    if values:
        lines.append(f"Average  of {len(values)} files is {np.mean(values):.2f} +- {np.std(values):.2f}")
    else:
        lines.append("No valid performances found in the specified directory.")
    return lines
