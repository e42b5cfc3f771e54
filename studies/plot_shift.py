"""The domain-shift figure from a sweep table: accuracy against the drift of the unguided expansion.

    python studies/plot_shift.py checkpoint/digits/sweeps/digits_shift/sweep.csv

The drift of a prior is the FID of its unguided expansion (its reference control, named
`<prior>_sd` in configs/sweeps/digits_shift.yaml) to the target's val split, in the guide's
feature space. A table with a `model` column groups cells by prior: the reference control of a
model is its first control without a preset, and a guided cell `<prior>_<setting>` sits at that
drift even when it is paired with another control (the authors' preset has its own).
Left: the paired guided - unguided test last_acc of every guided cell against its own control
(95 % t interval), one line per setting; the x positions of the settings are spread by a few
percent so that their intervals do not hide each other (log scale).
Right: the unguided expansion's own test last_acc (mean ± std over seeds) per prior.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import csv
from pathlib import Path

import matplotlib

from distdiff import DistDiffError
from distdiff.domains import OneLineParser
from distdiff.options import run_cli

CONTROL_SUFFIX = "_sd"


def read_rows(path):
    """sweep.csv rows as dicts with numbers (blank -> None)."""
    path = Path(path)
    if not path.is_file():
        raise DistDiffError(f"{path} not found; run the sweep first (bash scripts/exps/domain_shift.sh)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value) if value != "" else None
            except ValueError:
                pass
    return rows


def curves(rows, metric="last_acc"):
    """({setting: [(drift, prior, mean, low, high)]}, [(drift, prior, mean, std)]) sorted by drift.

    Each guided row carries its paired difference against its own control (the sweep's `control`
    column); it is placed at the drift of its prior's reference control (see the module doc; in a
    table without a `model` column, its own control), whose name `<prior>_sd` labels the prior.
    """
    cells = {r["cell"]: r for r in rows}
    if all(r.get("control") for r in rows):
        raise DistDiffError("no unguided cells in the table")
    references = reference_controls(rows)
    guided = {}
    for row in rows:
        control = cells.get(row.get("control") or "")
        if control is None or row.get(f"d_{metric}") is None:
            continue
        reference = references.get(row.get("model")) or control
        prior = prior_name(reference["cell"])
        setting = row["cell"][len(prior) + 1:] if row["cell"].startswith(prior + "_") else row["cell"]
        guided.setdefault(setting, []).append((reference["fid_val"], prior, row[f"d_{metric}"],
                                               row[f"d_{metric}_low"], row[f"d_{metric}_high"]))
    unguided = [(r["fid_val"], prior_name(r["cell"]), r[f"{metric}_mean"], r[f"{metric}_std"])
                for r in references.values()]
    return {k: sorted(v, key=_drift) for k, v in guided.items()}, sorted(unguided, key=_drift)


def reference_controls(rows):
    """The priors' reference controls, {model: row} in a table with a `model` column (each model's
    first control without a preset), else {cell: row} for every control without a preset."""
    references = {}
    for row in rows:
        if not row.get("control") and not row.get("preset"):
            references.setdefault(row.get("model") or row["cell"], row)
    return references


def selection(rows, priors):
    """The step-2 rule of configs/sweeps/digits_shift.yaml over `priors`, per setting: at how many
    of them the setting helps (paired 95 % intervals of test last_acc and last-epoch val accuracy
    both above zero) and its mean paired last-epoch val gain. Returns rows sorted by that mean."""
    guided_at = {}
    for row in rows:
        if not row.get("control"):
            continue
        for prior in priors:
            if row["cell"].startswith(prior + "_"):
                guided_at.setdefault(row["cell"][len(prior) + 1:], {})[prior] = row
    missing = [p for p in priors if not any(p in by_prior for by_prior in guided_at.values())]
    if missing:
        raise DistDiffError(f"--select_priors: no guided cell <prior>_<setting> in the table for {', '.join(missing)}")
    table = []
    for setting, by_prior in guided_at.items():
        gains = [r["d_last_val_acc"] for r in by_prior.values() if r.get("d_last_val_acc") is not None]
        helps = [p for p, r in by_prior.items()
                 if (r.get("d_last_acc_low") or 0) > 0 and (r.get("d_last_val_acc_low") or 0) > 0]
        table.append({"setting": setting, "priors": len(by_prior), "helps_at": helps,
                      "mean_d_last_val": sum(gains) / len(gains) if gains else None})
    # Highest mean gain first; a setting without val numbers last.
    return sorted(table, key=lambda t: (t["mean_d_last_val"] is None, -(t["mean_d_last_val"] or 0.0)))


def _drift(point):
    """Sort key: points without a drift go last."""
    return float("inf") if point[0] is None else point[0]


def prior_name(control_cell):
    """`printed0_sd` -> `printed0`; other control names stay as they are."""
    return control_cell[:-len(CONTROL_SUFFIX)] if control_cell.endswith(CONTROL_SUFFIX) else control_cell


def plot(guided, unguided, path, title):
    """Two panels: paired Δ vs drift per setting; unguided accuracy vs drift."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (setting, points) in enumerate(guided.items()):
        spread = 1.03 ** (i - (len(guided) - 1) / 2)  # multiplicative: the axis is logarithmic
        xs = [p[0] * spread if p[0] is not None else None for p in points]
        means = [p[2] for p in points]
        errs = [[m - (lo if lo is not None else m) for _, _, m, lo, _ in points],
                [(hi if hi is not None else m) - m for _, _, m, _, hi in points]]
        left.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=setting)
    left.axhline(0, color="black", lw=0.8)
    left.set_xlabel("drift: FID of the unguided expansion to target val")
    left.set_ylabel("guided - unguided test last_acc (points)")
    left.legend(fontsize=8)
    xs = [p[0] for p in unguided]
    # markers only: neighbours in drift may be different shifts
    right.errorbar(xs, [p[2] for p in unguided], yerr=[p[3] or 0 for p in unguided], fmt="s", capsize=3)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("drift: FID of the unguided expansion to target val")
    right.set_ylabel("unguided expansion: test last_acc (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()  # before the labels, whose overlap test uses the final layout
    _label_points(fig, right, [(prior, x, mean) for x, prior, mean, _ in unguided])
    fig.tight_layout()  # again, to make room for a label past the last point
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label_points(fig, ax, points):
    """Name each point, at the first offset whose label overlaps no label placed before it
    (priors of similar drift and accuracy sit on top of each other)."""
    fig.canvas.draw()  # settles the axis limits: a label's extent is measured in the final frame
    renderer = fig.canvas.get_renderer()
    placed = []
    for name, x, y in points:
        for dy in (4, -10, 14, -20, 24, -30, 34):
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, dy), fontsize=8)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # nowhere free: keep the first place rather than drop the name
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            box = label.get_window_extent(renderer)
        placed.append(box)


def plot_samples(rows, expansions, sweep, source_root, path, classes=("0", "2", "4", "6", "8")):
    """Rows: the sources, then per prior its unguided and its first guided copy 0 of each source."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    references, expansions = {r["cell"] for r in reference_controls(rows).values()}, Path(expansions)
    pairs = []  # (prior, control cell, guided cell)
    for row in rows:
        control = row.get("control")  # a preset's own control is not a prior's reference
        if control in references and all(c != control for _, c, _ in pairs):
            pairs.append((prior_name(control), control, row["cell"]))
    if not pairs:
        raise DistDiffError("no guided cell with a control in the table: nothing to show")
    suffix = "_expand_0.png"  # the first expanded source of each class: <stem>_expand_0.png
    stems = [sorted((expansions / f"sweep_{sweep}_{pairs[0][1]}" / c).glob(f"*{suffix}"))[0].name.removesuffix(suffix)
             for c in classes]
    sources = [next((Path(source_root) / c).glob(f"{stem}.*")) for c, stem in zip(classes, stems)]
    nrows = 1 + 2 * len(pairs)
    fig, axes = plt.subplots(nrows, len(classes), figsize=(len(classes) * 0.9 + 1, nrows * 0.95), squeeze=False)
    labels = ["source"] + [f"{prior} {kind}" for prior, *_ in pairs for kind in ("SD", "DistDiff")]
    for r, label in enumerate(labels):
        for c, (name, source) in enumerate(zip(classes, sources)):
            cell = None if r == 0 else pairs[(r - 1) // 2][1 + (r - 1) % 2]
            copy = expansions / f"sweep_{sweep}_{cell}" / name / f"{source.stem}{suffix}"
            image = source if cell is None else copy
            axes[r, c].imshow(Image.open(image).convert("RGB"))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("copy 0 of the first source per class; SD and DistDiff share the noise", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = get_parser().parse_args(argv)
    rows = read_rows(args.table)
    if args.select_priors:
        table = selection(rows, args.select_priors)
        print(f"selection over {', '.join(args.select_priors)} (val only; helps = test last_acc and "
              "last-epoch val intervals above zero):")
        print("| setting | priors | mean Δ last-epoch val | helps at |\n|---|---|---|---|")
        for t in table:
            gain = "-" if t["mean_d_last_val"] is None else f"{t['mean_d_last_val']:+.2f}"
            print(f"| {t['setting']} | {t['priors']} | {gain} | {', '.join(t['helps_at']) or '-'} |")
    if args.samples:
        from distdiff.registry import get_dataset

        spec = get_dataset(args.dataset)
        expansions = Path(args.table).parents[2] / "expansions"  # <root>/<dataset>/sweeps/<name>/sweep.csv
        plot_samples(rows, expansions, Path(args.table).parent.name, spec.split_dir(spec.train_split), args.samples)
        print(f"-> {args.samples}")
    guided, unguided = curves(rows, args.metric)
    title = f"{Path(args.table).parent.name}: {args.metric}, 95 % t intervals, paired by seed"
    plot(guided, unguided, args.figure, title)
    print(f"-> {args.figure}")
    return 0


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("table", help="sweep.csv of a sweep (controls named <prior>_sd label the priors)")
    parser.add_argument("--metric", default="last_acc", choices=("last_acc", "test_at_best_val"),
                        help="accuracy metric on both panels")
    parser.add_argument("--figure", default="figure/domain_shift.png", help="output PNG")
    parser.add_argument("--samples", default=None, metavar="PNG",
                        help="also draw a sample grid (sources, then each prior's unguided and guided copies)")
    parser.add_argument("--dataset", default="digits", help="the target dataset (its train split holds the sources)")
    parser.add_argument("--select_priors", nargs="+", default=None, metavar="PRIOR",
                        help="print the selection rule's table over these priors (e.g. inverted0 lowcontrast0)")
    return parser


if __name__ == "__main__":
    run_cli(main)
