"""Figures from finished runs: accuracy bars with error bars, and a grid of expanded samples.

    python studies/plot_results.py --dataset digits --arch resnet_small
writes figure/accuracy.png (original vs SD vs DistDiff, mean ± std over seeds, from the
results.json files) and figure/expansion_grid.png (per class: a source image, its guided copies
and its unguided copies made with the same seeds).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from PIL import Image

from distdiff import DistDiffError
from distdiff.domains import COUNT, RATE, OneLineParser
from distdiff.options import run_cli
from distdiff.registry import get_dataset
from distdiff.results import experiment_row
from distdiff.runs import dataset_dirname, preset_run_dir

METRICS = (("last_acc", "last epoch"), ("test_at_best_val", "test @ best val"), ("best_acc", "best test (paper)"))


def experiment_dirs(args):
    """(label, experiment dir) for the three headline conditions and their controls."""
    conditions = [("original", None),
                  (f"SD x{args.ratio}", f"sd_x{args.ratio}{args.exp_suffix}"),
                  (f"DistDiff x{args.ratio}", f"distdiff_x{args.ratio}{args.exp_suffix}"),
                  (f"SD x{args.ratio}\n(equal iters)", f"sd_x{args.ratio}{args.exp_suffix}_eqiter"),
                  (f"DistDiff x{args.ratio}\n(equal iters)", f"distdiff_x{args.ratio}{args.exp_suffix}_eqiter")]
    # The training scripts' own naming rule, so the --aug suffix is placed exactly as they place it.
    dirs = [(label, preset_run_dir(args.checkpoint, args.dataset, args.arch, args.pretrained, args.lr, 1, exp,
                                   args.preset, args.aug).parent) for label, exp in conditions]
    return [(label, exp_dir) for label, exp_dir in dirs if exp_dir.is_dir()]


def plot_accuracy(args, path):
    """Grouped bars: one group per condition, one bar per metric, std error bars, n in labels."""
    rows = [(label, experiment_row(exp)) for label, exp in experiment_dirs(args)]
    rows = [(label, row) for label, row in rows if row["n"] > 0]
    if not rows:
        raise DistDiffError(f"no finished runs for {args.dataset}/{args.arch}; run single_exp.sh first")
    fig, ax = plt.subplots(figsize=(1.9 * len(rows) + 2, 3.6))
    width = 0.8 / len(METRICS)
    for m, (metric, name) in enumerate(METRICS):
        means = [row[f"{metric}_mean"] for _, row in rows]
        stds = [0 if row[f"{metric}_std"] != row[f"{metric}_std"] else row[f"{metric}_std"] for _, row in rows]
        xs = [i + (m - 1) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(range(len(rows)), [f"{label}\n(n={row['n']})" for label, row in rows], fontsize=8)
    low = min(row[f"{m}_mean"] for _, row in rows for m, _ in METRICS if row[f"{m}_mean"] == row[f"{m}_mean"])
    ax.set_ylim(max(0, low - 15), 100)
    ax.set_ylabel("test accuracy (%)")
    aug = "" if args.aug == "default" else f", --aug {args.aug}"
    ax.set_title(f"{args.dataset}, {args.arch}{aug}: mean ± std over seeds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_rows(guided, unguided, train_root, ratio, classes_shown):
    """Per shown class, its first expanded source and that source's copies in both expansions (an
    expansion of some sources only, or a val split held out of train/, leaves others out)."""
    classes = sorted(p.name for p in guided.iterdir() if p.is_dir())
    rows = []
    for name in classes[:: max(1, len(classes) // classes_shown)][:classes_shown]:
        for first in sorted((guided / name).glob("*_expand_0.png")):
            stem = first.name[:-len("_expand_0.png")]
            copies = [d / name / f"{stem}_expand_{k}.png" for d in (guided, unguided) for k in range(ratio)]
            sources = sorted(p for p in (train_root / name).iterdir() if p.stem == stem)  # no glob: [ ] in names
            if sources and all(p.is_file() for p in copies):
                rows.append([sources[0], *copies])
                break
    if not rows:
        raise DistDiffError(f"no source of {train_root} has all its copies in {guided} and {unguided}")
    return rows


def plot_grid(args, path, classes_shown=5):
    """Rows: source | guided copies | unguided copies, for the first source of a few classes."""
    spec = get_dataset(args.dataset)
    base = Path(args.checkpoint) / dataset_dirname(args.dataset) / "expansions"
    guided, unguided = base / f"distdiff_x{args.ratio}{args.exp_suffix}", base / f"sd_x{args.ratio}{args.exp_suffix}"
    if not (guided.is_dir() and unguided.is_dir()):
        raise DistDiffError(f"expansions {guided} and {unguided} are needed for the sample grid")
    rows = grid_rows(guided, unguided, spec.split_dir(spec.train_split), args.ratio, classes_shown)
    cols = 1 + 2 * args.ratio
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 0.95), squeeze=False)
    for r, images in enumerate(rows):
        for c, img_path in enumerate(images):
            ax = axes[r, c]
            ax.imshow(Image.open(img_path).convert("RGB"))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("source" if c == 0 else ("DistDiff" if c <= args.ratio else "SD"), fontsize=7)
    fig.suptitle("same seed per column pair: guided (DistDiff) vs unguided (SD) img2img", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--dataset", default="digits", help="dataset whose runs are plotted")
    parser.add_argument("--arch", default="resnet_small", help="classifier arch of the runs")
    parser.add_argument("--lr", type=RATE, default=0.1, help="learning rate of the runs (part of their dir name)")
    parser.add_argument("--pretrained", action="store_true", help="plot the pretrained runs")
    parser.add_argument("--ratio", type=COUNT, default=5, help="expansion ratio of the runs to plot")
    parser.add_argument("--exp_suffix", default="", empty_ok=True, help="suffix of the expansion names (single_exp.sh's PRESET: _authors)")
    parser.add_argument("--preset", default=None, help="plot the runs trained with this training preset (single_exp.sh's PRESET)")
    parser.add_argument("--aug", default="default", help="plot the runs trained with this --aug (figure accuracy_aug-<aug>.png)")
    parser.add_argument("--checkpoint", default="checkpoint", help="checkpoint root")
    parser.add_argument("--figure_dir", default="figure", help="where the PNGs go")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    out = Path(args.figure_dir)
    out.mkdir(parents=True, exist_ok=True)
    accuracy = out / ("accuracy.png" if args.aug == "default" else f"accuracy_aug-{args.aug}.png")
    plot_accuracy(args, accuracy)
    plot_grid(args, out / "expansion_grid.png")
    print(f"wrote {accuracy} and {out / 'expansion_grid.png'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
