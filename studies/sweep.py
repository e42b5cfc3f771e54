"""Guidance sweep: does distribution-aware guidance change the samples and the accuracy, and when?

    python studies/sweep.py configs/sweeps/digits_study.yaml              # 5 seeds, 2 trainings at a time
    python studies/sweep.py configs/sweeps/digits_study.yaml --dry_run    # list cells and commands only
    python studies/sweep.py configs/sweeps/tiny.yaml --dataset digits --seeds 1 \\
        --expand_flags "--model checkpoint/prior/digits" --train_flags "--epochs 1 --threads 1"

Each grid cell is one expand_distdiff.py run into <root>/<dataset>/expansions/sweep_<name>_<cell>,
then one train_expand.py run per seed. Every guided cell is paired with a `guidance: none`
control sharing its noise (added automatically), and the table reports same-seed accuracy
differences vs that control with 95 % t intervals (test last_acc and test_at_best_val, and best
val accuracy, the column to select cells on), the guidance energy before -> after, how far
guidance moved the pixels, FID / precision / recall / coverage against the real val split in the
guide's feature space, how often the guide classifier recognises the intended class, and
seconds per image. Outputs go to <root>/<dataset>/sweeps/<name>/ (sweep.csv, sweep.md, log.txt,
logs/ with every subprocess's output, metrics/ caching finished cells) plus the --figure.
A rerun skips cells whose expansion is complete and whose seeds all have results.json.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
import logging
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from distdiff import DistDiffError, registry
from distdiff.config import REPO_ROOT as REPO
from distdiff.config import TRAIN_SPELLINGS, dataset_section, parse_args, spellings_of
from distdiff.devices import configure_cpu
from distdiff.domains import COUNT, INDEX, OneLineParser
from distdiff.fileio import atomic_write_json, atomic_write_text
from distdiff.options import add_threads_flag, add_train_expand_flags, run_cli
from distdiff.results import to_csv
from distdiff.runs import dataset_dirname, default_guide_ckpt, setup_logging, sweep_dir, train_run_dir
from studies import grid as sw

logger = logging.getLogger("distdiff")


def main(argv=None):
    args = get_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    plan = make_plan(args)
    if args.dry_run:
        return print_plan(plan)
    from distdiff import datasets as ds  # torchvision is slow to import; a dry run or a bad grid needs none
    spec = registry.get_dataset(plan.dataset)
    registry.ensure_prepared(spec)
    if not Path(plan.guide).is_file():
        raise DistDiffError(f"guide classifier {plan.guide} not found; train it with "
                            f"train_original.py {plan.dataset} --seed 1 --output {plan.root}, or pass --guide_ckpt")
    plan.sources = ds.load_split(spec, spec.train_split, verify=False)
    plan.source_root = spec.split_dir(spec.train_split)
    setup_logging(plan.sweep_dir)
    configure_cpu(args.threads)
    logger.info("sweep %s on %s: %d cells (%d controls), seeds %s -> %s", plan.name, plan.dataset,
                len(plan.run), sum(c.is_control for c in plan.run), plan.seeds, plan.sweep_dir)
    failures = run_cells(plan)
    rows = collect_rows(plan, failures)
    table = write_tables(plan, rows)
    if plan.grid.expansion_seeds:  # the unit of replication is the expansion: tables over expansions
        table, contrasts = write_replicated(plan, rows)
        plot_replicated(plan, contrasts, Path(args.figure))
    else:
        plot_paired(plan, rows, Path(args.figure))
    print(table)
    if failures:
        raise DistDiffError(f"{len(failures)} of {len(plan.run)} cell(s) failed ({', '.join(failures)}); "
                            f"first: {next(iter(failures.values()))}")


# ---------------------------------------------------------------------------
# The plan: cells, paths, commands
# ---------------------------------------------------------------------------

def make_plan(args):
    """Validated grid, cells, paths and pass-through flags as one namespace."""
    grid = sw.load_grid(args.grid)
    dataset = args.dataset or grid.dataset
    if not dataset:
        raise DistDiffError(f"no dataset: pass --dataset or set `dataset:` in {args.grid}")
    name = args.name or Path(args.grid).stem
    if not sw.NAME_RE.match(name):
        raise DistDiffError(f"sweep name {name!r} must match {sw.NAME_RE.pattern}; pass --name")
    if args.jobs < 1 or args.expand_jobs < 1:
        raise DistDiffError(f"--jobs and --expand_jobs must be at least 1, got {args.jobs} and {args.expand_jobs}")
    cells = sw.expand_grid(grid)
    run = select_cells(cells, args.cells, args.grid)
    expand_tokens, train_tokens = split_flags(args.expand_flags, "--expand_flags"), \
        split_flags(args.train_flags, "--train_flags")
    sw.check_passthrough(expand_tokens, sw.EXPAND_OWNED, sw.grid_flag_names(cells), "--expand_flags")
    root = Path(args.checkpoint_root)
    plan = argparse.Namespace(
        grid=grid, dataset=dataset, name=name, cells=cells, run=run, by_name={c.name: c for c in cells},
        root=root, sweep_dir=sweep_dir(root, dataset, name), seeds=sorted(set(args.seeds)),
        jobs=args.jobs, expand_jobs=args.expand_jobs, guide=str(args.guide_ckpt or default_guide_ckpt(root, dataset)),
        expand_tokens=expand_tokens, train_tokens=train_tokens,
        train=train_settings(dataset, train_tokens))
    sw.check_passthrough(train_tokens, train_owned(plan), set(), "--train_flags")
    return plan


def select_cells(cells, names, grid_path):
    """The cells to run: all, or those of the named grid cells (every expansion seed's copy) and
    their controls. The tables still cover every cell of the grid."""
    if not names:
        return cells
    unknown = sorted(set(names) - {c.group for c in cells})
    if unknown:
        raise DistDiffError(f"--cells {unknown}: not in {grid_path} ({', '.join(dict.fromkeys(c.group for c in cells))})")
    chosen = [c for c in cells if c.group in names]
    controls = {c.control for c in chosen if c.control}
    return [c for c in cells if c.group in names or c.name in controls]


def split_flags(text, what):
    """Shell-style split of a pass-through flag string."""
    try:
        return shlex.split(text)
    except ValueError as err:  # an unbalanced quote
        raise DistDiffError(f"{what} {text!r}: {err}") from None


def train_settings(dataset, tokens):
    """train_expand.py's resolved arch/lr/pretrained/equal_iterations (its own flags, YAML and
    precedence), to find its run dirs."""
    parser = add_train_expand_flags(argparse.ArgumentParser(add_help=False, exit_on_error=False))
    argv = ["--dataset", dataset, *tokens]
    try:
        _, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise DistDiffError(f"--train_flags: {err}") from None
    if unknown:
        raise DistDiffError(f"--train_flags: train_expand.py does not take {unknown}")
    return parse_args(parser, argv, config=dataset_section("train"))


def exp_name(plan, cell):
    """The expansion and training experiment name of a cell."""
    return f"sweep_{plan.name}_{cell.name}"


def expansion_dir(plan, cell):
    """Where the cell's images go (train_expand.py's default expanded dir for the same exp)."""
    return plan.root / dataset_dirname(plan.dataset) / "expansions" / exp_name(plan, cell)


def experiment_dir(plan, cell):
    """The train_expand.py experiment dir holding the cell's seed<N>/ runs."""
    return run_group_dir(plan, exp_name(plan, cell) + ("_eqiter" if plan.train.equal_iterations else ""))


def run_group_dir(plan, exp):
    """The dir of the seed<N>/ runs of experiment `exp` (None: original-only) with the sweep's
    training settings."""
    t = plan.train
    return train_run_dir(plan.root, plan.dataset, t.arch, t.pretrained, t.lr, 1, exp, t.aug, t.resize_mode).parent


def expand_command(plan, cell):
    """The expand_distdiff.py command of a cell."""
    # An explicit single shard: under torchrun or a SLURM array the expander would otherwise
    # pick up RANK/WORLD_SIZE and expand only part of the cell.
    return [sys.executable, "expand_distdiff.py", "--dataset", plan.dataset, "--exp", exp_name(plan, cell),
            "--out", str(expansion_dir(plan, cell)), "--checkpoint_root", str(plan.root),
            "--guide_ckpt", plan.guide, "--split", "0", "--total_split", "1",
            *plan.expand_tokens, *sw.cell_cli(cell)]


def own_train_args(plan, cell, seed):
    """The train_expand.py flags the sweep sets itself for a cell and seed."""
    return ["--dataset", plan.dataset, "--exp", exp_name(plan, cell), "--output", str(plan.root), "--seed", str(seed)]


def train_command(plan, cell, seed):
    """The train_expand.py command of a cell and seed."""
    return [sys.executable, "train_expand.py", *own_train_args(plan, cell, seed), *plan.train_tokens]


def train_owned(plan):
    """Every spelling of the training flags the sweep sets, and of --expanded_dir, which its --exp
    implies: --train_flags must not set them."""
    names = sw.passthrough_flag_names(own_train_args(plan, plan.cells[0], 1)) + ["expanded_dir"]
    return {s.lstrip("-").replace("-", "_") for name in names for s in spellings_of(name, TRAIN_SPELLINGS)
            if s.startswith("--")}


def print_plan(plan):
    """--dry_run: the cells, their pairing and the commands, without running anything."""
    print(f"sweep {plan.name} on {plan.dataset}: {len(plan.run)} cells -> {plan.sweep_dir}")
    print(f"base: {sw.settings_text(plan.grid.base)}")
    for cell in plan.run:
        role = "control" if cell.is_control else f"paired with {cell.control}"
        print(f"\n[{cell.name}] {sw.settings_text(cell.overrides)} ({role})")
        print("  " + shlex.join(expand_command(plan, cell)))
        for seed in plan.seeds:
            print("  " + shlex.join(train_command(plan, cell, seed)))


# ---------------------------------------------------------------------------
# Running cells
# ---------------------------------------------------------------------------

def cell_state(plan, cell):
    """(expansion complete?, seeds still without results.json), from the files alone."""
    flags = {**sw.passthrough_values(plan.expand_tokens), **cell.flags}
    done = sw.expansion_complete(expansion_dir(plan, cell), flags, plan.sources.samples, plan.sources.classes)
    return done, sw.missing_seeds(experiment_dir(plan, cell), plan.seeds)


def run_cells(plan):
    """Expand cells (--expand_jobs at a time); each finished expansion trains its seeds in the
    background (--jobs at a time) while later cells expand. Returns {cell name: error}."""
    failures, lock = {}, threading.Lock()
    bar = tqdm(total=len(plan.run), desc=f"sweep {plan.name}", unit="cell", dynamic_ncols=True)

    def finish(cell, start, errors=()):
        """Log a cell's end; called from worker threads."""
        with lock:
            if errors:  # keep going: one bad cell should not cost the others
                failures[cell.name] = str(errors[0])
                logger.error("cell %s failed after %.0fs: %s", cell.name, time.time() - start, errors[0])
            elif start is not None:
                logger.info("cell %s: finished in %.0fs", cell.name, time.time() - start)
            bar.update(1)

    def expand_then_train(cell, train_pool):
        """One cell: expansion here, trainings queued on the training pool."""
        start = time.time()
        try:
            todo = expand_cell(plan, cell)
        except DistDiffError as err:
            return finish(cell, start, [err])
        if todo is None:
            return finish(cell, None)
        futures = [train_pool.submit(run_logged, train_command(plan, cell, seed),
                                     plan.sweep_dir / "logs" / f"{cell.name}.seed{seed}.log",
                                     f"train_expand.py seed {seed}") for seed in todo]
        when_all_done(futures, lambda errors: finish(cell, start, errors))

    # The expansion pool closes first (with-statements exit in reverse), so every training has
    # been queued before the training pool waits for its queue to drain.
    with ThreadPoolExecutor(max_workers=plan.jobs) as train_pool, \
            ThreadPoolExecutor(max_workers=plan.expand_jobs) as expand_pool:
        expansions = [expand_pool.submit(expand_then_train, cell, train_pool) for cell in plan.run]
    bar.close()
    for future in expansions:
        future.result()  # re-raise anything unexpected (a bug, a full disk) instead of losing it
    return failures


def expand_cell(plan, cell):
    """Expand a cell unless complete; returns the seeds left to train, or None if the cell is done."""
    expanded, todo = cell_state(plan, cell)
    if expanded and not todo:
        logger.info("cell %s: complete (expansion verified, %d/%d seeds have results.json); skipped",
                    cell.name, len(plan.seeds), len(plan.seeds))
        return None
    logger.info("cell %s: start (%s)", cell.name, sw.settings_text(cell.overrides))
    if not expanded:
        start, log = time.time(), plan.sweep_dir / "logs" / f"{cell.name}.expand.log"
        run_logged(expand_command(plan, cell), log, "expand_distdiff.py")
        if not cell_state(plan, cell)[0]:
            raise DistDiffError(f"expansion {expansion_dir(plan, cell)} is incomplete after the expander "
                                f"finished; see {log}")
        logger.info("cell %s: expansion done in %.0fs; training seeds %s", cell.name, time.time() - start, todo)
    return todo


def when_all_done(futures, callback):
    """Call callback([exceptions]) once, when the last of `futures` has finished."""
    if not futures:
        return callback([])
    lock, remaining = threading.Lock(), [len(futures)]

    def one_done(_):
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            callback([f.exception() for f in futures if f.exception() is not None])
    for future in futures:
        future.add_done_callback(one_done)


def run_logged(cmd, log_path, what):
    """Run a command from the repo root with its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        # The children inherit this process's OMP_WAIT_POLICY (set at the top): several share the cores.
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        raise DistDiffError(f"{what} exited with {code}: {lines[-1] if lines else '(no output)'} (log {log_path})")


# ---------------------------------------------------------------------------
# Metrics, tables, figure
# ---------------------------------------------------------------------------

def collect_rows(plan, failures):
    """One metrics row per cell; finished cells come from, or go to, metrics/<cell>.json."""
    complete = {c.name: cell_state(plan, c) for c in plan.cells}
    complete = {name: done and not todo for name, (done, todo) in complete.items()}
    evaluator, rows, flags = None, [], list(dict.fromkeys(k for c in plan.cells for k in c.flags))
    for cell in plan.cells:
        control = plan.by_name.get(cell.control)
        finished = complete[cell.name] and (control is None or complete[control.name])
        signature = cache_signature(plan, cell, control)
        cache = plan.sweep_dir / "metrics" / f"{cell.name}.json"
        row = sw.cached_row(cache, signature) if finished else None
        if row is not None:
            logger.info("cell %s: metrics from cache %s", cell.name, cache)
        else:
            evaluator = evaluator or make_evaluator(plan)
            pair = None if control is None else (experiment_dir(plan, control), expansion_dir(plan, control))
            row = sw.cell_row(cell, experiment_dir(plan, cell), expansion_dir(plan, cell), plan.seeds,
                              pair, evaluator, plan.source_root)
            if finished:
                sw.store_row(cache, signature, row)
        status = "done" if complete[cell.name] else ("failed" if cell.name in failures else "incomplete")
        # Every row gets every grid flag, so CSV columns line up whatever the cells set.
        rows.append({"cell": cell.name, "status": status, "exp": exp_name(plan, cell), **row,
                     **{k: cell.flags.get(k) for k in flags}})
    return rows


def make_evaluator(plan):
    """Distribution metrics in the guide's feature space against the real val split (the split
    cells are selected on), or the test split for a dataset without one."""
    from studies.metrics import FeatureSpaceEvaluator, load_eval_classifier
    model, transform, classes = load_eval_classifier(plan.guide, len(plan.sources.classes))
    spec = registry.get_dataset(plan.dataset)
    reference = spec.split_dir(spec.val_split or spec.test_split)
    return FeatureSpaceEvaluator(model, transform, classes, reference)


def cache_signature(plan, cell, control):
    """Everything a cached row depends on; any change recomputes it (`metrics`: the row's
    layout, so rows cached before a metric existed are recomputed)."""
    return {"metrics": 3, "flags": cell.flags, "control": None if control is None else [control.name, control.flags],
            "seeds": plan.seeds, "guide": plan.guide, "expand_flags": plan.expand_tokens,
            "train_flags": plan.train_tokens, "experiment": str(experiment_dir(plan, cell))}


def write_tables(plan, rows):
    """sweep.csv and sweep.md in the sweep dir; returns the markdown text."""
    text = (f"# Sweep {plan.name} on {plan.dataset}\n\n"
            f"Grid {plan.grid.path}; base: {sw.settings_text(plan.grid.base)}; seeds {plan.seeds}.\n"
            "Δ columns: same-seed accuracy difference vs the cell's unguided control, 95 % t interval. "
            "Δpx: mean |pixel change| in [0, 1] vs the control's image with the same (source, k), and "
            "vs the (resized) source image. FID, precision, recall (k-NN, k = 3) and coverage: the "
            "expansion against the real val split, in the guide classifier's feature space. Guide agrees: "
            "generated images the guide classifier assigns to the intended class.\n\n" + sw.markdown_table(rows) + "\n")
    atomic_write_text(plan.sweep_dir / "sweep.csv", to_csv(rows))
    atomic_write_text(plan.sweep_dir / "sweep.md", text)
    logger.info("tables written to %s and %s", plan.sweep_dir / "sweep.csv", plan.sweep_dir / "sweep.md")
    return text


def replicate_dirs(plan, group):
    """The experiment dir of each expansion seed's copy of a cell group (the original-only runs,
    the same dir for every seed, for `original`)."""
    if group == sw.ORIGINAL:
        return [run_group_dir(plan, None)] * len(plan.grid.expansion_seeds)
    return [experiment_dir(plan, plan.by_name[f"{group}_e{seed}"]) for seed in plan.grid.expansion_seeds]


def write_replicated(plan, rows):
    """replicated.md/.json: per cell group, accuracy and mechanism means over expansions; per
    contrast (each guided cell vs its control, then the grid's), t intervals over expansions.
    Returns (markdown text, contrast rows)."""
    from studies import replication as rep

    by_cell = {row["cell"]: row for row in rows}

    def group_rows(group):
        return [by_cell.get(f"{group}_e{seed}") for seed in plan.grid.expansion_seeds] if group != sw.ORIGINAL \
            else [None] * len(plan.grid.expansion_seeds)

    groups = list(dict.fromkeys(cell.group for cell in plan.cells))
    summaries = []
    for group in groups:
        done = sum(row is not None and row.get("status") == "done" for row in group_rows(group))
        summaries.append((group, done, rep.group_accuracy(replicate_dirs(plan, group), plan.seeds),
                          rep.mechanism_summary(group_rows(group))))
    first = plan.grid.expansion_seeds[0]
    pairs = [{"a": g, "b": plan.by_name[plan.by_name[f"{g}_e{first}"].control].group, "confidence": 0.95,
              "primary": False} for g in groups if not plan.by_name[f"{g}_e{first}"].is_control]
    contrasts = [rep.contrast_row(f"{c['a']} − {c['b']}", replicate_dirs(plan, c["a"]), replicate_dirs(plan, c["b"]),
                                  group_rows(c["a"]), group_rows(c["b"]), plan.seeds, c["confidence"], c["primary"],
                                  reused=next((side for side in ("a", "b") if c[side] == sw.ORIGINAL), None))
                 for c in pairs + plan.grid.contrasts]
    text = (f"# Sweep {plan.name} on {plan.dataset}, over expansions\n\nGrid {plan.grid.path}; base: "
            f"{sw.settings_text(plan.grid.base)}; expansion seeds {plan.grid.expansion_seeds}; training seeds "
            f"{plan.seeds} inside each.\n\n## Cells (means over expansions)\n\n" + rep.mechanism_table(summaries)
            + "\n\n## Contrasts\n\n" + rep.contrast_table(contrasts) + "\n")
    atomic_write_text(plan.sweep_dir / "replicated.md", text)
    atomic_write_json(plan.sweep_dir / "replicated.json", {
        "expansion_seeds": plan.grid.expansion_seeds, "training_seeds": plan.seeds,
        "cells": [{"cell": g, "expansions_done": n, **acc, **mech} for g, n, acc, mech in summaries],
        "contrasts": contrasts})
    logger.info("tables over expansions written to %s", plan.sweep_dir / "replicated.md")
    return text, contrasts


def plot_replicated(plan, contrasts, path):
    """Each contrast's Δ test last_acc and Δ last-epoch val with its interval over expansions."""
    if not contrasts:
        return
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(contrasts) + 2.5), 4.2))
    xs = list(range(len(contrasts)))
    for offset, metric, label in ((-0.1, "last_acc", "test, last epoch"), (0.1, "last_val_acc", "val, last epoch")):
        means = [_value(c[f"d_{metric}"]) for c in contrasts]
        arms = [[_half(c, metric, "low") for c in contrasts], [_half(c, metric, "high") for c in contrasts]]
        ax.errorbar([x + offset for x in xs], means, yerr=arms, fmt="o", ms=4, capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xs, [c["contrast"] + (" *" if c["primary"] else "") for c in contrasts], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("Δ accuracy (points)")
    ax.set_title(f"sweep {plan.name} ({plan.dataset}): mean over {len(plan.grid.expansion_seeds)} expansions, "
                 "t interval over expansions\n(* primary: its own, corrected level)", fontsize=9)
    save_figure(fig, ax, path)


def save_figure(fig, ax, path):
    """Legend, layout, write, close."""
    ax.legend(fontsize=8)
    sw.save_figure(fig, path)
    logger.info("figure written to %s", path)


def plot_paired(plan, rows, path):
    """Paired Δ accuracy per guided cell with 95 % error bars, cells grouped by swept flags."""
    guided = [(cell, row) for cell, row in zip(plan.cells, rows) if not cell.is_control]
    if not guided:
        logger.warning("no guided cells: no figure")
        return
    # Cells varying the same flags sit side by side, so one axis reads left to right.
    axes = list(dict.fromkeys(cell.axis for cell, _ in guided))
    guided.sort(key=lambda pair: axes.index(pair[0].axis))
    xs, x, previous = [], 0.0, None
    for cell, _ in guided:
        x += 1.6 if previous is not None and cell.axis != previous else 1.0
        xs.append(x)
        previous = cell.axis
    width = min(max(5.0, 0.45 * len(guided) + 2.5), 16)
    fig, ax = plt.subplots(figsize=(width, 4.2))
    for offset, metric, label in ((-0.1, "last_acc", "last epoch"), (0.1, "test_at_best_val", "test @ best val")):
        means = [_value(row.get(f"d_{metric}")) for _, row in guided]
        low = [_half(row, metric, "low") for _, row in guided]
        high = [_half(row, metric, "high") for _, row in guided]
        ax.errorbar([x + offset for x in xs], means, yerr=[low, high], fmt="o", ms=4, capsize=3, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlim(xs[0] - 0.7, xs[-1] + 0.7)
    for left, right, (cell, _), (nxt, _) in zip(xs, xs[1:], guided, guided[1:]):
        if cell.axis != nxt.axis:
            ax.axvline((left + right) / 2, color="grey", lw=0.5, ls=":")
    ax.set_xticks(xs, [cell.name for cell, _ in guided], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Δ accuracy vs unguided control (points)")
    # A sweep of a few cells draws a narrow figure, where one title line would be clipped.
    ax.set_title(f"sweep {plan.name} ({plan.dataset}): same-seed Δ vs control,{' ' if width > 8 else chr(10)}"
                 f"95 % t interval, {len(plan.seeds)} seed(s)", fontsize=9)
    save_figure(fig, ax, path)


def _value(value):
    """A number for matplotlib: a blank becomes nan, which draws no point."""
    return float("nan") if value is None else value


def _half(row, metric, side):
    """Length of one error-bar arm of a row or contrast (d_<metric> with d_<metric>_low/high); 0 (no
    bar) when the interval is undefined (fewer than 2 seeds or expansions)."""
    mean, bound = row.get(f"d_{metric}"), row.get(f"d_{metric}_{side}")
    if mean is None or bound is None:
        return 0.0
    return mean - bound if side == "low" else bound - mean


def get_parser():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("grid", help="grid YAML (base + axes and/or cells), e.g. configs/sweeps/digits_study.yaml")
    parser.add_argument("--dataset", default=None, help="dataset (default: the grid's `dataset:` key)")
    parser.add_argument("--seeds", type=INDEX, nargs="+", default=[1, 2, 3, 4, 5], help="training seeds per cell")
    parser.add_argument("--jobs", type=COUNT, default=2,
                        help="parallel train_expand.py processes (they overlap later cells' expansions)")
    parser.add_argument("--expand_jobs", "--expand-jobs", type=COUNT, default=1,
                        help="parallel expand_distdiff.py processes (1: the expander keeps its threads to itself)")
    parser.add_argument("--checkpoint_root", "--checkpoint-root", default="checkpoint",
                        help="root of expansions, training runs and the sweep dir")
    parser.add_argument("--name", default=None, help="sweep name (default: the grid file's stem)")
    parser.add_argument("--guide_ckpt", "--guide-ckpt", default=None,
                        help="guide classifier for guidance and guide agreement (default: the expander's, "
                             "<root>/<dataset>/<guide_arch>_unpretrained_lr0.1/seed1/model_best.pth.tar)")
    parser.add_argument("--expand_flags", "--expand-flags", default="", empty_ok=True,
                        help="extra expand_distdiff.py flags for every cell, e.g. \"--model checkpoint/prior/digits\"")
    parser.add_argument("--train_flags", "--train-flags", default="", empty_ok=True,
                        help="extra train_expand.py flags for every run, e.g. \"--epochs 30\"")
    parser.add_argument("--figure", default="figure/guidance_sweep.png", help="paired-Δ figure path")
    add_threads_flag(parser, 1, "torch CPU threads for the metrics in this process (the expander's come from the grid)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                        help="run only these grid cells (with their controls); the tables cover the whole grid")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the cells and commands only")
    return parser


if __name__ == "__main__":
    run_cli(main)
