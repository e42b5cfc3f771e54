"""Guidance sweeps: grid files, cells with paired unguided controls, and per-cell metrics.

A grid file (YAML) has a `base` dict of expander flags applied to every cell, and `axes`
(flag -> list of values, expanded as a cartesian product) and/or `cells` (explicit dicts of
flag overrides, each with an optional `name`). Every guided cell is paired with a
`guidance: none` control that shares all settings that shape the unguided sample, so the
expander gives both the same per-item noise and the difference is the guidance alone.
"""
import csv
import itertools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from distdiff import DistDiffError
from distdiff import expand_flags
from distdiff import shards
from distdiff.config import load_yaml_config
from distdiff.fileio import atomic_write_json
from distdiff.settings import GUIDANCE_MODES
from distdiff.results import fmt_interval, load_seed_results
from distdiff.stats import fmt_mean_std, mean_std, paired_difference

logger = logging.getLogger(__name__)

# The expander's flags by role (distdiff/expand_flags.py); every list here is derived from them.
# A grid may set what shapes the images or the run, not paths, the shard or one-shot modes.
SWEEPABLE = tuple(expand_flags.keys("sample", "guidance", "items", "execution", "runtime", "preset"))
# Flags that change an unguided image: a control must match its guided cells on all of them,
# including the execution settings that round differently (an exact pairing). The items flags only
# change which items exist, but equal sets keep every item paired.
UNGUIDED_KEYS = tuple(expand_flags.keys("sample", "items", "execution", "preset"))
# Flags the sweep sets itself, in every spelling; pass-through strings must not set them.
EXPAND_OWNED = tuple(expand_flags.spellings(expand_flags.keys("path", "shard") + ["guidance"]))
GRID_KEYS = ("dataset", "base", "axes", "cells", "expansion_seeds", "contrasts")
CONTRAST_KEYS = ("a", "b", "confidence", "primary")
ORIGINAL = "original"  # a contrast side: the original-only runs (train_original.py), no expansion
ACC_METRICS = ("last_acc", "test_at_best_val", "best_acc")
# The val columns select cells (best_val_acc, and last_val_acc, the last epoch's val accuracy,
# which is what the last_acc read on test corresponds to); test is read after the selection.
PAIRED_METRICS = ("last_acc", "test_at_best_val", "best_val_acc", "last_val_acc")
# Short labels for automatic cell names ("r0.2_rho30"); other flags use their own name.
ABBREV = {"radius": "r", "step_size": "rho", "guidance_step": "M", "lookahead_steps": "P",
          "guidance_repeats": "x", "guidance_interval": "every", "normalize_features": "norm",
          "lambda_class": "lc", "lambda_group": "lg", "num_groups": "K", "cluster": "", "guidance": "",
          "strength": "s", "num_steps": "T", "cfg_scale": "cfg", "expand_ratio": "R", "limit": "n",
          "batch_size": "bs", "record_energy": "energy", "preset": "", "renormalize_prototypes": "unitproto",
          "guide_input": "input", "framing": "", "prompts": "prompts"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")
_MISSING = object()  # "not set in base", distinct from an explicit None


@dataclass
class Cell:
    """One expansion setting: its effective grid flags, the overrides vs base, its control."""
    name: str
    flags: dict
    overrides: dict
    control: str | None = None  # name of the paired unguided cell; None for a control itself
    axis: tuple = field(default=())
    group: str | None = None    # the grid cell this one replicates (with expansion_seeds), else its name
    expansion_seed: int | None = None

    def __post_init__(self):
        self.group = self.group or self.name

    @property
    def is_control(self):
        """True for an unguided (guidance: none) cell."""
        return self.control is None


@dataclass
class Grid:
    """A validated grid file."""
    path: Path
    dataset: str | None
    base: dict
    axes: dict
    cells: list
    expansion_seeds: list = field(default_factory=list)  # each cell once per seed: <name>_e<seed>
    contrasts: list = field(default_factory=list)        # [{a, b, confidence, primary}] over expansions


# ---------------------------------------------------------------------------
# Grid files
# ---------------------------------------------------------------------------

def load_grid(path):
    """Read and validate a grid YAML file."""
    path = Path(path)
    try:
        raw = load_yaml_config(path)
    except yaml.YAMLError as err:
        raise DistDiffError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DistDiffError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise DistDiffError(f"{path}: unknown top-level key(s) {unknown}; valid: {', '.join(GRID_KEYS)}")
    base = check_flags(raw.get("base") or {}, f"{path.name} base")
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise DistDiffError(f"{path.name} axes: expected a mapping flag -> list of values")
    for flag, values in axes.items():
        if not isinstance(values, list) or not values:
            raise DistDiffError(f"{path.name} axes.{flag}: expected a non-empty list of values")
    axes = dict(zip(check_names(axes, f"{path.name} axes"), axes.values()))
    for flag, values in axes.items():
        for value in values:
            check_value(flag, value, f"{path.name} axes.{flag}")
    cells = raw.get("cells") or []
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise DistDiffError(f"{path.name} cells: expected a list of mappings (flag overrides)")
    explicit = []
    for i, cell in enumerate(cells):
        name = cell.get("name")
        if name is not None and not NAME_RE.match(str(name)):
            raise DistDiffError(f"{path.name} cells[{i}]: name {name!r} must match {NAME_RE.pattern}")
        flags = check_flags({k: v for k, v in cell.items() if k != "name"}, f"{path.name} cells[{i}]")
        explicit.append({"name": None if name is None else str(name), "flags": flags})
    if not axes and not explicit:
        raise DistDiffError(f"{path} defines no cells; add `axes` (flag -> values) or `cells`")
    dataset = raw.get("dataset")
    seeds, contrasts = check_replication(raw, base, axes, explicit, path.name)
    return Grid(path, None if dataset is None else str(dataset), base, axes, explicit, seeds, contrasts)


def check_replication(raw, base, axes, cells, where):
    """Validated expansion_seeds and contrasts; with expansion seeds no cell may set --seed."""
    seeds = raw.get("expansion_seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise DistDiffError(f"{where} expansion_seeds: expected a list of distinct integers, got {seeds!r}")
    if seeds and ("seed" in base or "seed" in axes or any("seed" in c["flags"] for c in cells)):
        raise DistDiffError(f"{where}: with expansion_seeds the sweep sets --seed itself; remove `seed`")
    contrasts = raw.get("contrasts") or []
    if contrasts and not seeds:
        raise DistDiffError(f"{where} contrasts: they are computed over expansions; add expansion_seeds")
    checked = []
    for i, item in enumerate(contrasts if isinstance(contrasts, list) else [None]):
        if not isinstance(item, dict) or not {"a", "b"} <= set(item) or set(item) - set(CONTRAST_KEYS):
            raise DistDiffError(f"{where} contrasts[{i}]: expected a mapping with a, b and optionally "
                                f"confidence, primary; got {item!r}")
        confidence = float(item.get("confidence", 0.95))
        if not 0 < confidence < 1:
            raise DistDiffError(f"{where} contrasts[{i}]: confidence {confidence} must be in (0, 1)")
        checked.append({"a": str(item["a"]), "b": str(item["b"]), "confidence": confidence,
                        "primary": bool(item.get("primary", False))})
    return seeds, checked


def check_names(names, where):
    """Flag names with hyphens turned into underscores; unknown ones fail with the valid list."""
    normalised = [str(k).replace("-", "_") for k in names]
    unknown = sorted(k for k in normalised if k not in SWEEPABLE)
    if unknown:
        raise DistDiffError(f"unknown flag(s) {unknown} in {where}; valid flags: {', '.join(sorted(SWEEPABLE))}")
    return normalised


def check_flags(flags, where):
    """A validated {flag: value} dict with normalised names."""
    if not isinstance(flags, dict):
        raise DistDiffError(f"{where}: expected a mapping of expander flags")
    normalised = dict(zip(check_names(flags, where), flags.values()))
    for flag, value in normalised.items():
        check_value(flag, value, f"{where} {flag}")
    return normalised


def check_value(flag, value, where):
    """Flag values are scalars; guidance must be a known mode (controls are found by it)."""
    if isinstance(value, (list, dict)):
        raise DistDiffError(f"{where}: expected a single value, got {value!r} (lists belong in `axes`)")
    if flag == "guidance" and str(value) not in GUIDANCE_MODES:
        raise DistDiffError(f"{where}: guidance {value!r} is not one of {', '.join(GUIDANCE_MODES)}")


# ---------------------------------------------------------------------------
# Cells and controls
# ---------------------------------------------------------------------------

def expand_grid(grid):
    """All cells: controls first, then guided cells in grid order, each paired with a control.

    Cells with `guidance: none` in the grid are controls; controls with the same unguided
    settings are merged (the first explicit `name` wins), and a missing control is added.
    """
    requested = [{"name": None, "flags": dict(zip(grid.axes, values))}
                 for values in itertools.product(*grid.axes.values())] if grid.axes else []
    requested += grid.cells
    controls, named, cells = {}, set(), []
    # Grid-defined controls first, so their names win over automatic ones.
    for req in requested:
        flags = {**grid.base, **req["flags"]}
        key = unguided_key(flags) if is_unguided(flags) else None
        if key is not None and (key not in controls or (req["name"] and key not in named)):
            controls[key] = make_control(grid.base, flags, req["name"])
            named.update([key] if req["name"] else [])
    for req in requested:
        flags = {**grid.base, **req["flags"]}
        if is_unguided(flags):
            continue
        key = unguided_key(flags)
        if key not in controls:
            controls[key] = make_control(grid.base, flags, None)
        name = req["name"] or auto_name(req["flags"])
        cells.append(Cell(name, flags, dict(req["flags"]), controls[key].name, tuple(req["flags"])))
    cells = list(controls.values()) + cells
    if grid.expansion_seeds:
        cells = replicate(cells, grid.expansion_seeds)
        groups = {cell.group for cell in cells} | {ORIGINAL}
        for contrast in grid.contrasts:
            for side in (contrast["a"], contrast["b"]):
                if side not in groups:
                    raise DistDiffError(f"{grid.path.name} contrasts: {side!r} is not a cell name "
                                        f"({', '.join(sorted(groups))})")
    seen = {}
    for cell in cells:
        if cell.name in seen:
            raise DistDiffError(f"{grid.path.name}: two cells are both named {cell.name!r} "
                                f"({cell.overrides} and {seen[cell.name].overrides}); give them a `name`")
        seen[cell.name] = cell
    return cells


def replicate(cells, seeds):
    """Every cell once per expansion seed (--seed), seed-major so that a stopped run has every
    cell for its first seeds; each copy is paired with its control's copy of the same seed."""
    return [Cell(f"{cell.name}_e{seed}", {**cell.flags, "seed": seed}, cell.overrides,
                 None if cell.control is None else f"{cell.control}_e{seed}", cell.axis, cell.name, seed)
            for seed in seeds for cell in cells]


def is_unguided(flags):
    """True when the flags turn guidance off."""
    return str(flags.get("guidance", "transform")) == "none"


def unguided_key(flags):
    """The settings that shape an unguided sample, as a hashable key."""
    return tuple((k, _canonical(flags[k])) for k in UNGUIDED_KEYS if k in flags)


def make_control(base, flags, name=None):
    """The guidance-none cell sharing `flags`' unguided settings (base supplies the rest)."""
    unguided = {k: flags[k] for k in UNGUIDED_KEYS if k in flags and base.get(k, _MISSING) != flags[k]}
    control_flags = {**base, **unguided, "guidance": "none"}
    auto = "control" + ("_" + auto_name(unguided) if unguided else "")
    return Cell(name or auto, control_flags, {**unguided, "guidance": "none"}, None, tuple(unguided))


def auto_name(overrides):
    """A short filesystem-safe name from flag overrides, e.g. {'radius': 0.5, 'step_size': 30} ->
    'r0.5_rho30'; an empty override set is 'base'."""
    if not overrides:
        return "base"
    parts = []
    for flag, value in overrides.items():
        abbr, text = ABBREV.get(flag, flag), _format_value(value)
        parts.append(abbr + ("-" if abbr and text[:1].isalpha() else "") + text)
    return re.sub(r"[^A-Za-z0-9.+_-]", "-", "_".join(parts))


def _format_value(value):
    """Compact text for names and tables: 0.5 -> '0.5', 10.0 -> '10', True -> 'on'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _canonical(value):
    """A comparable form of a flag value (YAML or command-line text): none-likes -> None,
    booleans -> bool, numbers -> float, anything else -> str."""
    if value is None or str(value).lower() == "none":
        return None
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def cli_value(value):
    """How a YAML value is written on the expander's command line."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return "none" if value is None else str(value)


def cell_cli(cell):
    """The cell's flags as expander arguments."""
    return [token for flag, value in cell.flags.items() for token in (f"--{flag}", cli_value(value))]


def settings_text(flags):
    """'radius=0.5, step_size=30' for tables."""
    return ", ".join(f"{k}={_format_value(v)}" for k, v in flags.items()) or "(base)"


def passthrough_flag_names(tokens):
    """Flag names (underscored) that a pass-through argument list sets."""
    return [tok[2:].split("=", 1)[0].replace("-", "_") for tok in tokens if tok.startswith("--")]


def check_passthrough(tokens, owned, grid_flags, what):
    """Reject pass-through flags the sweep or the grid already sets (they would silently fight)."""
    for name in passthrough_flag_names(tokens):
        if name in owned:
            raise DistDiffError(f"{what} must not set --{name}: the sweep sets it")
        if name in grid_flags:
            raise DistDiffError(f"{what} sets --{name}, which the grid also sets; set it in one place")


def passthrough_values(tokens):
    """{flag: text} of the sweepable flags a pass-through list sets (`--flag v` or `--flag=v`)."""
    values = {}
    for i, token in enumerate(tokens):
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name in SWEEPABLE and (eq or (i + 1 < len(tokens) and not tokens[i + 1].startswith("--"))):
            values[name] = value if eq else tokens[i + 1]
    return values


def grid_flag_names(cells):
    """Every flag any cell sets."""
    return {k for cell in cells for k in cell.flags}


# ---------------------------------------------------------------------------
# Completion checks (file-based; no subprocess)
# ---------------------------------------------------------------------------

def recorded_mismatch(out_dir, flags):
    """The first flag whose value differs from <out>/args.yaml, or None when all match."""
    recorded = yaml.safe_load((Path(out_dir) / "args.yaml").read_text()) or {}
    for flag, value in flags.items():
        if flag not in recorded or _canonical(recorded[flag]) != _canonical(value):
            return flag
    return None


def expansion_complete(out_dir, flags, samples, class_names):
    """True when <out>/args.yaml records these flags and every expected image exists."""
    out_dir = Path(out_dir)
    if not (out_dir / "args.yaml").is_file():
        return False
    changed = recorded_mismatch(out_dir, flags)
    if changed:
        logger.info("%s records another %s than the grid; the expander will check it", out_dir, changed)
        return False
    recorded = yaml.safe_load((out_dir / "args.yaml").read_text())
    items = shards.work_items(samples, recorded["expand_ratio"], recorded.get("limit"))
    return not shards.missing_items(items, out_dir, class_names)


def missing_seeds(exp_dir, seeds):
    """Seeds of `exp_dir` without results.json."""
    return [s for s in seeds if not (Path(exp_dir) / f"seed{s}" / "results.json").is_file()]


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def accuracy_metrics(exp_dir, seeds, control_dir=None):
    """Mean/std/n over `seeds` per metric, plus same-seed differences vs `control_dir`."""
    done = seed_values(exp_dir, seeds)
    row = {"n": len(done)}
    for metric in ACC_METRICS:
        mean, std, _ = mean_std(r.get(metric) for r in done.values())
        row[f"{metric}_mean"], row[f"{metric}_std"] = none_for_nan(mean), none_for_nan(std)
    control = None if control_dir is None else seed_values(control_dir, seeds)
    for metric in PAIRED_METRICS:  # blank for a control, so every row has the same columns
        diff = {} if control is None else paired_difference(
            {s: r[metric] for s, r in done.items() if metric in r},
            {s: r[metric] for s, r in control.items() if metric in r})
        for suffix, key in (("", "mean"), ("_low", "low"), ("_high", "high"), ("_n", "n")):
            row[f"d_{metric}{suffix}"] = none_for_nan(diff.get(key))
    return row


def seed_values(exp_dir, seeds):
    """{seed: results} of the requested seeds that finished, with `last_val_acc` (the last row
    of the run's summary.csv) where the dataset has a val split."""
    if not Path(exp_dir).is_dir():
        return {}
    done, _ = load_seed_results(exp_dir)
    done = {s: r for s, r in done.items() if s in set(seeds)}
    for seed, results in done.items():
        with open(Path(exp_dir) / f"seed{seed}" / "summary.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]
        if last.get("val_acc"):
            results["last_val_acc"] = float(last["val_acc"])
    return done


def none_for_nan(value):
    """nan -> None, so CSV cells are blank and JSON is standard."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def manifest_metrics(out_dir):
    """Energy before/after means, fraction of items whose energy dropped, seconds per image."""
    records = shards.read_manifests(out_dir) if Path(out_dir).is_dir() else []
    guided = [r for r in records if r.get("energy_before") is not None and r.get("energy_after") is not None]
    row = {"n_images": len(records), "energy_before": None, "energy_after": None, "energy_drop_frac": None,
           "sec_per_img": none_for_nan(float(np.mean([r["seconds"] for r in records]))) if records else None}
    if guided:
        before = np.array([r["energy_before"] for r in guided], dtype=float)
        after = np.array([r["energy_after"] for r in guided], dtype=float)
        row.update(energy_before=float(before.mean()), energy_after=float(after.mean()),
                   energy_drop_frac=float(np.mean(after < before)))
    return row


def load_rgb(path, size=None):
    """An image as float [H, W, 3] in [0, 1], optionally resized (bilinear) to `size` (w, h)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.BILINEAR)
        return np.asarray(img, dtype=np.float64) / 255.0


def pixel_change(out_dir, other_dir):
    """Mean |a - b| over images with the same (source, k) in two expansions (None if none pair)."""
    mine = {(r["source"], r["k"]): r["path"] for r in shards.read_manifests(out_dir)} if Path(out_dir).is_dir() else {}
    theirs = {(r["source"], r["k"]): r["path"] for r in shards.read_manifests(other_dir)} \
        if Path(other_dir).is_dir() else {}
    diffs = [np.abs(load_rgb(Path(out_dir) / mine[key]) - load_rgb(Path(other_dir) / theirs[key])).mean()
             for key in sorted(set(mine) & set(theirs))
             if (Path(out_dir) / mine[key]).is_file() and (Path(other_dir) / theirs[key]).is_file()]
    return float(np.mean(diffs)) if diffs else None


def source_change(out_dir, source_root):
    """Mean |generated - source| with the source resized to the generated size (None if empty)."""
    records = shards.read_manifests(out_dir) if Path(out_dir).is_dir() else []
    diffs = []
    for record in records:
        path = Path(out_dir) / record["path"]
        if path.is_file():
            generated = load_rgb(path)
            source = load_rgb(Path(source_root) / record["source"], generated.shape[1::-1])
            diffs.append(np.abs(generated - source).mean())
    return float(np.mean(diffs)) if diffs else None


DISTRIBUTION_KEYS = ("fid_val", "precision", "recall", "coverage", "guide_agreement")


def distribution_metrics(out_dir, evaluator):
    """Guide-feature FID, precision/recall/coverage against the evaluator's reference (the val
    split in a sweep) and the guide's agreement with the class folders; blanks when there is no
    evaluator or too few images for the k-NN metrics."""
    blank = dict.fromkeys(DISTRIBUTION_KEYS)
    if evaluator is None or not Path(out_dir).is_dir():
        return blank
    count = sum(1 for _ in Path(out_dir).rglob("*.png"))
    if count <= evaluator.k:
        return blank
    metrics = evaluator.evaluate(out_dir)
    return {"fid_val": metrics["fid"], "precision": metrics["precision"], "recall": metrics["recall"],
            "coverage": metrics["coverage"], "guide_agreement": metrics["guide_acc"]}


def cell_row(cell, exp_dir, out_dir, seeds, control=None, evaluator=None, source_root=None):
    """Every metric of one cell as a flat dict; `control` is (exp_dir, out_dir) of its pair."""
    row = {"cell": cell.name, "control": cell.control or "", "settings": settings_text(cell.overrides)}
    row.update(accuracy_metrics(exp_dir, seeds, None if control is None else control[0]))
    row.update(manifest_metrics(out_dir))
    row["pixel_change_vs_control"] = pixel_change(out_dir, out_dir if control is None else control[1])
    row["pixel_change_vs_source"] = None if source_root is None else source_change(out_dir, source_root)
    row.update(distribution_metrics(out_dir, evaluator))
    return row


# ---------------------------------------------------------------------------
# Metrics cache
# ---------------------------------------------------------------------------

def cached_row(path, signature):
    """A cached row when its signature matches, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    # Compare in JSON form: tuples and lists, or ints and floats, differ only in Python.
    return stored["row"] if stored.get("signature") == json.loads(json.dumps(signature)) else None


def store_row(path, signature, row):
    """Cache a finished cell's row with the settings it was computed for."""
    atomic_write_json(path, {"signature": signature, "row": row})


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

def save_figure(fig, path, dpi=100):
    """Layout, write (its folder made), close."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def fmt_number(value, fmt="{:.3f}"):
    """Formatted number, or '-' for a blank."""
    return "-" if value is None else fmt.format(value)


def markdown_table(rows):
    """One line per cell: settings, accuracy, paired deltas, energy, pixels, distribution metrics."""
    lines = ["| cell | settings | n | last_acc | test_at_best_val | best_acc (paper) | "
             "Δlast_acc vs control [95% CI] | Δtest_at_best_val [95% CI] | Δbest val acc [95% CI] | Δlast val acc [95% CI] | "
             "energy before → after | energy dropped | Δpx vs control | Δpx vs source | FID to val (guide) | "
             "precision | recall | coverage | guide agrees | s/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        acc = [fmt_mean_std(nan_for_none(row[f"{m}_mean"]), nan_for_none(row[f"{m}_std"])) for m in ACC_METRICS]
        paired = [fmt_interval(nan_for_none(row.get(f"d_{m}")), nan_for_none(row.get(f"d_{m}_low")), nan_for_none(row.get(f"d_{m}_high")))
                  for m in PAIRED_METRICS] if row["control"] else ["(control)"] * len(PAIRED_METRICS)
        energy = "-" if row["energy_before"] is None else f"{row['energy_before']:.4f} → {row['energy_after']:.4f}"
        cells = [row["cell"] + ("" if row.get("status", "done") == "done" else f" ({row['status']})"),
                 row["settings"], str(row["n"]), *acc, *paired, energy,
                 fmt_number(row["energy_drop_frac"], "{:.0%}"), fmt_number(row["pixel_change_vs_control"], "{:.4f}"),
                 fmt_number(row["pixel_change_vs_source"], "{:.4f}"), fmt_number(row.get("fid_val"), "{:.2f}"),
                 fmt_number(row.get("precision")), fmt_number(row.get("recall")), fmt_number(row.get("coverage")),
                 fmt_number(row.get("guide_agreement"), "{:.1%}"), fmt_number(row["sec_per_img"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def nan_for_none(value):
    """None -> nan, for the nan-aware formatters in distdiff.stats and distdiff.results."""
    return math.nan if value is None else value
