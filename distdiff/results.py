"""Collect results.json files of training runs into per-experiment rows."""
import csv
import io
import json
from pathlib import Path

from distdiff.stats import fmt_mean_std, mean_std

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


def load_seed_results(exp_dir):
    """({seed: results dict} of complete seeds, [names of incomplete seed dirs])."""
    done, incomplete = {}, []
    for run in seed_dirs(exp_dir):
        path = run / "results.json"
        if path.is_file():
            done[int(run.name[4:])] = json.loads(path.read_text())
        else:
            incomplete.append(run.name)
    return done, incomplete


def experiment_row(exp_dir, root=None):
    """One aggregated row: mean/std/n per metric plus the incomplete-seed count."""
    done, incomplete = load_seed_results(exp_dir)
    name = str(Path(exp_dir).relative_to(root)) if root and Path(exp_dir) != Path(root) else Path(exp_dir).name
    row = {"experiment": name, "n": len(done), "incomplete": len(incomplete),
           "seeds": ",".join(str(s) for s in sorted(done))}
    for metric in METRICS:
        mean, std, _ = mean_std(r.get(metric) for r in done.values())
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
    return row


def seed_rows(exp_dir):
    """One row per seed run (complete or not)."""
    done, incomplete = load_seed_results(exp_dir)
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
