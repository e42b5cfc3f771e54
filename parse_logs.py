"""Summarise finished training runs: mean ± std over seeds, one row per experiment.

    python parse_logs.py checkpoint/digits/resnet_small_unpretrained_lr0.1 --multi
    python parse_logs.py checkpoint/digits --multi           # every experiment below
    python parse_logs.py checkpoint/digits/resnet_small_unpretrained_lr0.1   # per-seed rows
    python parse_logs.py checkpoint/digits --multi --paired resnet_small_unpretrained_sd_x5_lr0.1
    python parse_logs.py checkpoint/digits --multi --seeds 1 2 3 --include 'resnet_small_unpretrained_lr0.1*'
    python parse_logs.py checkpoint/caltech-101/resnet50_unpretrained_distdiff_x5_lr0.1 --multi --authors
    python parse_logs.py checkpoint/mine/run1       # one run dir (--run_dir, the authors' --checkpoint)

Reads each seed<N>/results.json. Seeds without results.json are counted as incomplete and
left out of the mean. The std is the sample std (ddof=1). best_acc is the paper's number
(best test accuracy over epochs); last_acc and test_at_best_val do not peek at test. --authors
prints instead what the authors' parse_logs.py prints: each results.yaml's best_accuracy, and
their mean ± population std (ddof=0), the numbers their paper reports.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
import sys
from pathlib import Path

from distdiff import DistDiffError
from distdiff.results import (add_paired, authors_summary, experiment_row, find_experiments, is_run_dir,
                              markdown_table, paired_table, run_row, run_table, seed_rows, select_experiments, to_csv)
from distdiff.fileio import atomic_write_text
from distdiff.domains import INDEX, OneLineParser, with_domain
from distdiff.options import run_cli


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="an experiment dir (with seed<N>/ children), any parent of them, or one run dir")
    parser.add_argument("--multi", action="store_true", help="aggregate seeds: mean ± std per experiment")
    parser.add_argument("--paired", default=None, metavar="EXPERIMENT",
                        help="with --multi: add same-seed differences vs this experiment (95%% t interval)")
    parser.add_argument("--csv", default=None, help="CSV output path (default: inside `path`)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="keep only experiments whose name (path below `path`) matches this shell "
                             "pattern; repeatable, e.g. --include 'resnet_small_unpretrained_lr0.1*'")
    parser.add_argument("--seeds", nargs="+", default=None, **with_domain(dict(
        type=INDEX, help="aggregate only these seeds (so rows with extra seeds stay comparable)")))
    parser.add_argument("--authors", action="store_true",
                        help="print what the authors' parse_logs.py prints for `path` (with --multi: its run "
                             "folders): best_accuracy per results.yaml, mean ± std with ddof=0; writes no CSV")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    root = Path(args.path)
    if not root.is_dir():
        raise DistDiffError(f"{root} is not a directory")
    if args.authors:
        if args.paired or args.include or args.seeds or args.csv:
            raise DistDiffError("--authors reads results.yaml as the authors' script does; it takes only --multi")
        print("\n".join(authors_summary(args.path, args.multi)))
        return 0
    experiments = find_experiments(root)
    if not experiments and is_run_dir(root):  # one run: its own table (nothing to aggregate)
        if args.paired or args.include or args.seeds:
            raise DistDiffError(f"{root} is one run dir: --paired, --include and --seeds need seed<N>/ runs")
        row = run_row(root)
        print(run_table(row))
        atomic_write_text(Path(args.csv) if args.csv else root / "summary_run.csv", to_csv([row]))
        return 0
    if not experiments:
        raise DistDiffError(f"no seed<N>/ run directories found under {root}")
    experiments = select_experiments(experiments, root, args.include)
    if not experiments:
        raise DistDiffError(f"no experiment under {root} matches --include {' '.join(args.include)}")
    seeds = set(args.seeds) if args.seeds else None
    if args.multi:
        rows = [experiment_row(exp, root, seeds) for exp in experiments]
        print(markdown_table(rows))
        if args.paired:
            if not add_paired(rows, experiments, args.paired, seeds=seeds):
                raise DistDiffError(f"--paired {args.paired!r} is not among the experiments: "
                                    f"{[r['experiment'] for r in rows]}")
            print()
            print(paired_table(rows, args.paired))
    else:
        rows = [row for exp in experiments for row in seed_rows(exp, seeds)]
        print(to_csv(rows), end="")
    csv_path = Path(args.csv) if args.csv else root / ("summary_multi.csv" if args.multi else "summary_seeds.csv")
    atomic_write_text(csv_path, to_csv(rows))
    incomplete = sum(r.get("incomplete", 0) for r in rows) if args.multi else \
        sum(1 for r in rows if r.get("status") == "incomplete")
    if incomplete:
        print(f"warning: {incomplete} incomplete seed run(s) excluded (no results.json)", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
