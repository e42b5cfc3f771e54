"""studies/sweep.py: a 2-cell grid end to end on a smoke prior trained on a mixture (with its
automatic control, a resumed rerun and the domain-shift figure), the metrics maths on fabricated
runs and manifests, grid expansion, bad grids."""
import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image
from scipy import stats as scipy_stats

from conftest import REPO, SMOKE_PRIOR, run_main, script
from distdiff import DistDiffError
from studies import grid as sw

T975 = {2: 4.302652729749462}  # Student t quantile, 97.5 %, by degrees of freedom


def run_sweep(args):
    """studies/sweep.py in-process (it starts the cells' expand and train processes); returns stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_main("studies.sweep", *args)
    return out.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, smoke_prior, random_guide):
    """tiny.yaml with the smoke prior (trained on a half-shifted mixture: the domain-shift study's
    path), a random guide, 1 seed of 1-epoch training."""
    root = tmp_path_factory.mktemp("sweep")
    tiny_pipe = smoke_prior / SMOKE_PRIOR
    ckpt = root / "ckpt"
    # Two processes at once: each spends most of its time importing on one core.
    args = ["configs/sweeps/tiny.yaml", "--dataset", "digits", "--seeds", "1", "--jobs", "2",
            "--expand_jobs", "2", "--checkpoint_root", ckpt, "--guide_ckpt", random_guide,
            "--expand_flags", f"--model {tiny_pipe}", "--train_flags", "--epochs 1 --threads 1",
            "--figure", root / "fig.png"]
    first = run_sweep(args)
    return {"root": root, "dir": ckpt / "digits" / "sweeps" / "tiny", "args": args, "first": first}


def read_rows(sweep_dir):
    with open(sweep_dir / "sweep.csv") as f:
        return {row["cell"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_sweep_writes_one_row_per_cell_with_paired_metrics(sweep):
    rows = read_rows(sweep["dir"])
    assert set(rows) == {"control", "r-none"}  # the grid cell and the automatic control
    for name in ("r-none",):
        row = rows[name]
        assert row["status"] == "done" and row["control"] == "control" and row["n"] == "1"
        assert row["d_last_acc"] != "" and row["d_test_at_best_val"] != "" and row["d_last_acc_n"] == "1"
        assert row["d_best_val_acc"] != "" and row["d_last_val_acc"] != ""
        assert float(row["pixel_change_vs_control"]) > 0
        assert float(row["energy_before"]) > 0 and 0 <= float(row["energy_drop_frac"]) <= 1
        assert 0 <= float(row["guide_agreement"]) <= 1 and float(row["sec_per_img"]) > 0
        assert row["n_images"] == "20"
        assert float(row["fid_val"]) > 0 and 0 <= float(row["recall"]) <= 1 and 0 <= float(row["coverage"]) <= 1
    control = rows["control"]
    assert control["guidance"] == "none" and control["d_last_acc"] == "" and control["energy_before"] == ""
    assert float(control["pixel_change_vs_control"]) == 0
    assert float(control["pixel_change_vs_source"]) > 0
    table = [line for line in (sweep["dir"] / "sweep.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 and "| r-none | radius=none | 1 |" in sweep["first"]
    figure = sweep["root"] / "fig.png"
    assert 1000 < figure.stat().st_size < 300_000


@pytest.mark.slow
def test_shift_figure_from_the_sweep_table(sweep):
    """studies/plot_shift.py on a real sweep table: each guided cell sits at its control's drift."""
    plot_shift = script("studies.plot_shift")
    rows = read_rows(sweep["dir"])
    assert run_main("studies.plot_shift", sweep["dir"] / "sweep.csv", "--figure", sweep["root"] / "shift.png",
                    "--samples", sweep["root"] / "samples.png") == 0
    assert (sweep["root"] / "samples.png").stat().st_size > 1000
    guided, unguided = plot_shift.curves(plot_shift.read_rows(sweep["dir"] / "sweep.csv"))
    drift = float(rows["control"]["fid_val"])
    assert list(guided) == ["r-none"]
    assert guided["r-none"][0][:3] == (drift, "control", float(rows["r-none"]["d_last_acc"]))
    assert [u[:2] for u in unguided] == [(drift, "control")]
    assert (sweep["root"] / "shift.png").stat().st_size > 1000


@pytest.mark.slow
def test_rerun_starts_no_subprocess_for_complete_cells(sweep):
    ckpt = sweep["root"] / "ckpt" / "digits"
    results = sorted(ckpt.rglob("results.json"))
    assert len(results) == 2  # one seed per cell
    watched = results + sorted((ckpt / "expansions").rglob("*.png")) + sorted((sweep["dir"] / "logs").iterdir())
    before = {p: os.stat(p).st_mtime_ns for p in watched}
    out = run_sweep(sweep["args"])
    assert out.count("complete (expansion verified, 1/1 seeds have results.json); skipped") == 2, out[-3000:]
    assert out.count("metrics from cache") == 2
    assert "start (" not in out
    assert {p: os.stat(p).st_mtime_ns for p in watched} == before  # logs untouched: nothing was launched
    assert read_rows(sweep["dir"]).keys() == {"control", "r-none"}


# ---------------------------------------------------------------------------
# Metrics maths on fabricated runs (no subprocesses)
# ---------------------------------------------------------------------------

def fake_results(exp_dir, seed, last, tbv, best):
    run = exp_dir / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"last_acc": last, "test_at_best_val": tbv, "best_acc": best}))
    # The last epoch's val accuracy is read from summary.csv: here half of last_acc.
    (run / "summary.csv").write_text(f"epoch,val_acc,test_acc\n1,10.0,10.0\n2,{last / 2},{last}\n")


def fake_image(path, value, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def manifest_line(source, k, before, after, seconds):
    path = f"{source.split('/')[0]}/{Path(source).stem}_expand_{k}.png"
    return json.dumps({"source": source, "k": k, "path": path, "energy_before": before,
                       "energy_after": after, "seconds": seconds}) + "\n"


@pytest.fixture
def fabricated(tmp_path):
    """A guided and a control cell: results for seeds 1-5, manifests with a stale record and a
    torn line, constant-colour images, and constant sources."""
    guided_exp, control_exp = tmp_path / "exp_guided", tmp_path / "exp_control"
    for seed, last, tbv, best in ((1, 80, 79, 81), (2, 82, 82, 83), (3, 84, 85, 86), (4, 86, 86, 87), (5, 0, 0, 0)):
        fake_results(guided_exp, seed, last, tbv, best)
    for seed, last, tbv in ((1, 79, 80), (2, 80, 80), (3, 81, 80), (5, 99, 99)):
        fake_results(control_exp, seed, last, tbv, 90)
    (control_exp / "seed4").mkdir()  # started, never finished: no pair for seed 4
    sources = tmp_path / "train"
    fake_image(sources / "0" / "a.png", 0, size=32)
    fake_image(sources / "1" / "b.png", 0, size=32)
    guided, control = tmp_path / "guided", tmp_path / "control"
    guided.mkdir()
    (guided / "manifest_shard0.jsonl").write_text(
        manifest_line("0/a.png", 0, 2.0, 1.5, 0.1) + manifest_line("0/a.png", 1, 1.0, 1.5, 0.1)
        + manifest_line("1/b.png", 1, 9.0, 0.0, 9.0))  # stale: replaced by shard1's record below
    (guided / "manifest_shard1.jsonl").write_text(
        manifest_line("1/b.png", 0, 3.0, 2.0, 0.3) + manifest_line("1/b.png", 1, 2.0, 2.5, 0.3) + '{"source": "1/b')
    for source, k, value in (("0/a", 0, 102), ("0/a", 1, 102), ("1/b", 0, 102), ("1/b", 1, 255)):
        fake_image(guided / f"{source}_expand_{k}.png", value)
    control.mkdir()
    (control / "manifest_shard0.jsonl").write_text(  # no (1/b.png, 1): that image has no pair
        "".join(manifest_line(s, k, None, None, 0.05) for s, k in (("0/a.png", 0), ("0/a.png", 1), ("1/b.png", 0))))
    for source, k in (("0/a", 0), ("0/a", 1), ("1/b", 0)):
        fake_image(control / f"{source}_expand_{k}.png", 51)
    cell = sw.Cell("r0.5", {"radius": 0.5}, {"radius": 0.5}, "control", ("radius",))
    control_cell = sw.Cell("control", {"guidance": "none"}, {"guidance": "none"}, None, ())
    return {"cell": cell, "control_cell": control_cell, "guided": guided, "control": control,
            "guided_exp": guided_exp, "control_exp": control_exp, "sources": sources}


def test_metrics_match_hand_computation(fabricated):
    f = fabricated
    row = sw.cell_row(f["cell"], f["guided_exp"], f["guided"], [1, 2, 3, 4], (f["control_exp"], f["control"]),
                      evaluator=None, source_root=f["sources"])
    # Accuracy over the requested seeds 1-4 (seed 5 is not requested).
    assert row["n"] == 4 and row["last_acc_mean"] == 83.0
    assert math.isclose(row["last_acc_std"], math.sqrt(20 / 3))  # deviations -3, -1, 1, 3; ddof=1
    assert row["test_at_best_val_mean"] == 83.0 and row["best_acc_mean"] == 84.25
    # Paired: seeds 1-3 only (control seed 4 is incomplete). last: diffs 1, 2, 3 -> mean 2, sd 1.
    half = T975[2] * 1.0 / math.sqrt(3)
    assert row["d_last_acc"] == 2.0 and row["d_last_acc_n"] == 3
    assert math.isclose(row["d_last_acc_low"], 2 - half) and math.isclose(row["d_last_acc_high"], 2 + half)
    # test_at_best_val: diffs -1, 2, 5 -> mean 2, sd 3.
    assert row["d_test_at_best_val"] == 2.0
    assert math.isclose(row["d_test_at_best_val_high"] - 2.0, 3 * half)
    # last-epoch val (half of last_acc): diffs 0.5, 1, 1.5 -> mean 1, sd 0.5.
    assert row["d_last_val_acc"] == 1.0 and math.isclose(row["d_last_val_acc_high"] - 1.0, 0.5 * half)
    # Manifests: last record per (source, k) wins; the torn line is ignored.
    assert row["n_images"] == 4
    assert row["energy_before"] == 2.0 and row["energy_after"] == 1.875 and row["energy_drop_frac"] == 0.5
    assert math.isclose(row["sec_per_img"], 0.2)
    # Pixels: 102/255 vs 51/255 on the 3 paired images (the unpaired 255 image is left out);
    # vs the black sources: 0.4, 0.4, 0.4 and 1.0.
    assert math.isclose(row["pixel_change_vs_control"], 0.2, abs_tol=1e-12)
    assert math.isclose(row["pixel_change_vs_source"], 0.55, abs_tol=1e-12)
    assert row["guide_agreement"] is None
    table = sw.markdown_table([{**row, "cell": "r0.5"}])
    assert f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}]" in table and "2.0000 → 1.8750 | 50%" in table


def test_control_row_has_blank_paired_columns_and_zero_pixel_change(fabricated):
    f = fabricated
    row = sw.cell_row(f["control_cell"], f["control_exp"], f["control"], [1, 2, 3], None, None, f["sources"])
    assert row["n"] == 3 and row["last_acc_mean"] == 80.0 and row["last_acc_std"] == 1.0
    assert row["d_last_acc"] is None and row["d_test_at_best_val_low"] is None
    assert row["energy_before"] is None and row["energy_drop_frac"] is None
    assert row["pixel_change_vs_control"] == 0.0 and math.isclose(row["sec_per_img"], 0.05)
    assert math.isclose(row["pixel_change_vs_source"], 0.2, abs_tol=1e-12)
    assert "(control)" in sw.markdown_table([row])


def test_metrics_cache_matches_on_signature_only(tmp_path):
    path, signature = tmp_path / "m.json", {"flags": {"radius": 0.5}, "seeds": (1, 2)}
    sw.store_row(path, signature, {"n": 2})
    assert sw.cached_row(path, signature) == {"n": 2}
    assert sw.cached_row(path, {**signature, "seeds": (1, 2, 3)}) is None


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------

def write_grid(path, text):
    path.write_text(text)
    return path


def test_study_grid_pairs_every_guided_cell_with_a_matching_control():
    cells = sw.expand_grid(sw.load_grid(REPO / "configs" / "sweeps" / "digits_study.yaml"))
    guided = [c for c in cells if not c.is_control]
    by_name = {c.name: c for c in cells}
    assert len(cells) >= 12 and len(by_name) == len(cells)
    for cell in guided:
        control = by_name[cell.control]
        assert control.is_control and control.flags["guidance"] == "none"
        assert sw.unguided_key(control.flags) == sw.unguided_key(cell.flags)
    assert by_name["s0.7"].control == "control_s0.7" and by_name["r0.5"].control == "control"
    swept = {k for c in guided for k in c.overrides}
    assert swept >= {"radius", "step_size", "guidance_step", "guidance_repeats", "guidance_interval",
                     "normalize_features", "lambda_class", "lambda_group", "num_groups", "cluster",
                     "strength", "guidance"}
    assert {c.flags.get("radius") for c in guided} >= {0.2, 0.5, 1.0, "none"}


def test_unguided_grid_cells_merge_into_one_control(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "base: {num_steps: 10}\naxes:\n  guidance: [transform, none]\n"
                                           "  radius: [0.2, 0.5]\ncells:\n  - {name: sd, guidance: none}\n")
    cells = sw.expand_grid(sw.load_grid(grid))
    assert [c.name for c in cells] == ["sd", "transform_r0.2", "transform_r0.5"]  # the grid's name wins
    assert cells[0].flags == {"num_steps": 10, "guidance": "none"}
    assert sw.cell_cli(cells[2]) == ["--num_steps", "10", "--guidance", "transform", "--radius", "0.5"]


def test_the_sweep_key_lists_follow_the_expander_flag_roles():
    from distdiff import expand_flags
    roles = {a.dest: a.role for a in expand_flags.get_parser()._actions if a.dest != "help"}
    assert None not in roles.values()  # every flag says what it changes
    assert {"radius", "batch_size", "limit", "preset"} <= set(sw.SWEEPABLE) and "split" not in sw.SWEEPABLE
    assert {"strength", "batch_size", "limit"} <= set(sw.UNGUIDED_KEYS) and "radius" not in sw.UNGUIDED_KEYS
    assert "batch_size" not in expand_flags.GENERATION_KEYS and "radius" in expand_flags.GENERATION_KEYS
    with pytest.raises(DistDiffError, match="must not set --output_dir"):  # an alias of --out
        sw.check_passthrough(["--output_dir", "x"], sw.EXPAND_OWNED, set(), "--expand_flags")


def test_dry_run_lists_cells_and_commands_and_runs_nothing(tmp_path):
    out = run_sweep([REPO / "configs" / "sweeps" / "tiny.yaml", "--seeds", "1", "2", "--checkpoint_root", tmp_path,
                     "--train_flags", "--epochs 1", "--figure", tmp_path / "f.png", "--dry_run"])
    assert out.count("expand_distdiff.py --dataset digits") == 2 and out.count("train_expand.py") == 4
    assert "--exp sweep_tiny_r-none" in out and "--radius none" in out and "(paired with control)" in out
    assert not any(tmp_path.iterdir())


def test_bad_grids_give_one_line_errors(tmp_path):
    grid = write_grid(tmp_path / "bad.yaml", "base: {num_steps: 10}\naxes:\n  radius: [0.2]\n  bogus_flag: [1]\n")
    with pytest.raises(DistDiffError, match="unknown flag.*bogus_flag.*valid flags.*step_size"):
        run_main("studies.sweep", grid, "--dataset", "digits", "--checkpoint_root", tmp_path)
    with pytest.raises(DistDiffError, match="not found"):
        sw.load_grid(tmp_path / "missing.yaml")
    with pytest.raises(DistDiffError, match="defines no cells"):
        sw.load_grid(write_grid(tmp_path / "empty.yaml", "base: {radius: 0.2}\n"))
    with pytest.raises(DistDiffError, match="lists belong in"):
        sw.load_grid(write_grid(tmp_path / "list.yaml", "cells:\n  - {radius: [0.2, 0.5]}\n"))
    with pytest.raises(DistDiffError, match="sets --strength, which the grid also sets"):
        sw.check_passthrough(["--strength", "0.7"], sw.EXPAND_OWNED, {"strength"}, "--expand_flags")
    with pytest.raises(DistDiffError, match="must not set --out"):
        sw.check_passthrough(["--out=x"], sw.EXPAND_OWNED, set(), "--expand_flags")
    for token in ("--manualSeed", "--data_expanded_dir", "--seed"):  # the authors' spellings too
        with pytest.raises(DistDiffError, match=f"--train_flags must not set {token}"):
            run_main("studies.sweep", REPO / "configs" / "sweeps" / "tiny.yaml", "--checkpoint_root", tmp_path,
                     "--train_flags", f"{token} 3", "--dry_run")


# ---------------------------------------------------------------------------
# Expansions as the unit of replication
# ---------------------------------------------------------------------------

REPLICATED = ("dataset: digits\nexpansion_seeds: [42, 43, 44]\nbase: {num_steps: 10}\ncells:\n"
              "  - {name: none, guidance: none}\n  - {name: noise, step_size: 0}\n  - {name: both}\n"
              "contrasts:\n  - {a: both, b: noise, confidence: 0.99, primary: true}\n  - {a: none, b: original}\n")


def test_expansion_seeds_replicate_every_cell_with_its_own_control(tmp_path):
    cells = sw.expand_grid(sw.load_grid(write_grid(tmp_path / "g.yaml", REPLICATED)))
    assert [c.name for c in cells[:3]] == ["none_e42", "noise_e42", "both_e42"]  # seed-major
    assert len(cells) == 9 and {c.group for c in cells} == {"none", "noise", "both"}
    both = {c.expansion_seed: c for c in cells if c.group == "both"}
    assert both[43].flags == {"num_steps": 10, "seed": 43} and both[43].control == "none_e43"
    assert sw.cell_cli(both[44])[-2:] == ["--seed", "44"]
    for text, message in (("expansion_seeds: [1, 1]\n", "distinct integers"),
                          ("expansion_seeds: [1]\nbase: {seed: 3}\n", "sets --seed itself"),
                          ("contrasts: [{a: x, b: y}]\n", "add expansion_seeds"),
                          ("expansion_seeds: [1]\ncontrasts: [{a: both, b: nope}]\n", "'nope' is not a cell name"),
                          ("expansion_seeds: [1]\ncontrasts: [{a: both}]\n", "expected a mapping with a, b")):
        with pytest.raises(DistDiffError, match=message):
            sw.expand_grid(sw.load_grid(write_grid(tmp_path / "bad.yaml", text + "cells:\n  - {name: both}\n")))


def test_contrasts_are_means_of_per_expansion_differences_with_t_over_expansions(tmp_path):
    """Fabricated runs for 3 expansions x 2 training seeds: each expansion's value is the mean of
    its same-seed differences, and the interval is t over the 3 expansions (not over 6 runs)."""
    sweep_cli = script("studies.sweep")
    grid = write_grid(tmp_path / "rep.yaml", REPLICATED)
    args = sweep_cli.get_parser().parse_args([str(grid), "--seeds", "1", "2", "--checkpoint_root", str(tmp_path),
                                              "--name", "energy_noise_3shot"])  # where the study's report looks
    plan = sweep_cli.make_plan(args)
    # both - noise per run: expansion 42: +1, +3 -> 2; 43: 0, +2 -> 1; 44: +4, +2 -> 3.
    accuracy = {"noise": {42: (70, 71), 43: (72, 70), 44: (69, 70)},
                "both": {42: (71, 74), 43: (72, 72), 44: (73, 72)},
                "none": {42: (60, 60), 43: (61, 61), 44: (62, 62)}}
    for group, by_seed in accuracy.items():
        for seed, values in by_seed.items():
            for training_seed, value in zip((1, 2), values):
                fake_results(sweep_cli.experiment_dir(plan, plan.by_name[f"{group}_e{seed}"]), training_seed,
                             value, value, value)
    for training_seed, value in ((1, 50), (2, 52)):
        fake_results(sweep_cli.replicate_dirs(plan, "original")[0], training_seed, value, value, value)
    rows = [{"cell": c.name, "status": "done", "energy_before": 1.0, "energy_after": 0.5 if c.group == "both" else 1.0}
            for c in plan.cells]
    plan.sweep_dir.mkdir(parents=True)
    text, contrasts = sweep_cli.write_replicated(plan, rows)
    saved = json.loads((plan.sweep_dir / "replicated.json").read_text())
    contrast = {c["contrast"]: c for c in saved["contrasts"]}
    primary = contrast["both − noise"]
    t99 = 9.924843200918276  # Student t, 99.5 %, 2 degrees of freedom
    assert primary["primary"] and primary["d_last_acc"] == 2.0 and primary["d_last_acc_n"] == 3
    assert math.isclose(primary["d_last_acc_high"] - 2.0, t99 * 1.0 / math.sqrt(3))  # sd of (2, 1, 3) is 1
    assert primary["d_energy_after"] == -0.5
    # none - original: one set of original-only runs (50, 52) serves every expansion (means 60, 61,
    # 62), so their spread enters: Welch, se^2 = 1/3 + 2/2, df = (4/3)^2 / ((1/3)^2/2 + 1^2/1).
    against = contrast["none − original"]
    assert against["d_last_acc"] == 10.0 and against["interval"].startswith("Welch")
    half = scipy_stats.t.ppf(0.975, (4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1)) * math.sqrt(4 / 3)
    assert math.isclose(against["d_last_acc_high"] - 10.0, half) and math.isclose(10.0 - against["d_last_acc_low"], half)
    from studies import replication
    mirrored = replication.contrast_row("original − none", sweep_cli.replicate_dirs(plan, "original"),
                                        sweep_cli.replicate_dirs(plan, "none"), [None] * 3, [None] * 3, plan.seeds,
                                        reused="a")
    assert (mirrored["d_last_acc"], mirrored["d_last_acc_low"]) == (-10.0, -against["d_last_acc_high"])
    cells = {c["cell"]: c for c in saved["cells"]}
    assert cells["both"]["expansions_done"] == 3 and math.isclose(cells["both"]["last_acc"], 72.333333333333)
    assert "Unit of replication: the expansion" in text and "| both − noise | 99% (primary) | 3 |" in text
    sweep_cli.plot_replicated(plan, contrasts, tmp_path / "rep.png")
    assert (tmp_path / "rep.png").stat().st_size > 1000
    # The study's report reads the same file: the primary contrast's 99 % interval on test is
    # above zero, but last-epoch val (half of last_acc here) must clear zero too.
    from studies import energy_noise
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert energy_noise.main(["report", "--checkpoint_root", str(tmp_path), "--figure", str(tmp_path / "s.png")]) == 0
    report = out.getvalue()
    assert "### 3 shots, in-domain, radius 0.2" in report and "radius 1.0" not in report  # no _r1 cells ran
    assert "Primary, both − noise only (99% t over 3 expansions)" in report
    assert energy_noise.verdict(primary) == ("the gradient contributes" if primary["d_last_val_acc_low"] > 0
                                             else "no measurable contribution of the gradient")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_the_headroom_gate_follows_the_committed_rule(tmp_path):
    from studies import energy_noise

    def gate(prior, low, high):
        path = tmp_path / "replicated.json"
        name = "none_indomain − original" if prior == "indomain" else f"none_{prior} − none_indomain"
        path.write_text(json.dumps({"contrasts": [{"contrast": name, "d_last_acc": (low + high) / 2,
                                                   "d_last_acc_low": low, "d_last_acc_high": high, "d_last_acc_n": 6}]}))
        return energy_noise.headroom(path, prior)[0]
    assert gate("indomain", 0.5, 2.0) and not gate("indomain", -0.5, 2.0)
    assert gate("inverted0", -3.0, -0.1) and not gate("inverted0", -3.0, 0.4)


def test_every_committed_sweep_config_loads():
    """configs/sweeps/*.yaml parse with their cells' flags checked against the expander's (a study
    committed before its run must not fail at its first step on a renamed flag)."""
    from conftest import REPO
    from studies.grid import load_grid
    paths = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        grid = load_grid(path)
        assert grid.cells or grid.axes, path


def test_the_guidance_variants_report_applies_the_committed_rule(tmp_path):
    """Both intervals (test and val) must clear zero for a verdict; the words depend on whether the
    control is a noise cell or none; secondary contrasts are labelled and carry no verdict."""
    from studies import guidance_variants as gv

    def contrast(name, test, val, primary=True):
        row = {"contrast": name, "primary": primary, "confidence": 0.996875 if primary else 0.95, "d_last_acc_n": 6,
               "d_last_val_acc_n": 6,
               "d_energy_after": None, "d_energy_after_low": None, "d_energy_after_high": None}
        for metric, (low, high) in (("last_acc", test), ("last_val_acc", val)):
            row |= {f"d_{metric}": (low + high) / 2, f"d_{metric}_low": low, f"d_{metric}_high": high}
        return row
    rows = [contrast("v1 − noise", (0.2, 1.0), (0.1, 2.0)), contrast("v1 − none", (0.2, 1.0), (-0.1, 2.0)),
            contrast("v3 − noise3", (-2.0, -0.5), (-3.0, -0.1)), contrast("v2 − none", (-2.0, -0.5), (-3.0, -0.1)),
            contrast("paper − none", (0.5, 1.0), (0.5, 1.0), primary=False)]
    assert [gv.verdict(r) for r in rows[:4]] == ["helps", "no measurable difference from plain img2img", "hurts",
                                                  "below plain img2img"]
    cell = {"cell": "v1", "expansions_done": 6, "last_acc": 90.0, "last_val_acc": 91.0, "energy_before": 0.5,
            "energy_after": 0.4} | dict.fromkeys(("energy_drop_frac", "pixel_change_vs_control", "pixel_change_vs_source",
                                                  "fid_val", "precision", "recall", "coverage", "guide_agreement"))
    folder = tmp_path / "guidance_variants_10shot"
    folder.mkdir()
    (folder / "replicated.json").write_text(json.dumps({"cells": [cell], "contrasts": rows}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert gv.main(["report", "--tables", str(tmp_path), "--figure", str(tmp_path / "gv.png")]) == 0
    text = out.getvalue()
    primary, secondary = text.split("Secondary (reported, not used by the rule):")
    # Detectable: (t 0.9984 + t 0.8) / t 0.9984 x half-width, 5 degrees of freedom: 1.1726 x 0.4 and x 0.95.
    assert "| v1 − noise | 99.69% | 6 | +0.60 [+0.20, +1.00] | +1.05 [+0.10, +2.00] | 0.47 / 1.11 | - | helps |" in primary
    assert math.isclose(gv.detectable(rows[0], "last_acc"), 0.4 * (1 + 0.9195438 / 5.3259203), rel_tol=1e-6)
    assert gv.detectable(rows[0] | {"interval": "Welch t: mean over expansions vs the b side's runs"}, "last_acc") is None
    assert "paper − none" not in primary and "| paper − none | 95.00% |" in secondary and "helps" not in secondary
    assert "3 shots" not in text and (tmp_path / "gv.png").stat().st_size > 1000
