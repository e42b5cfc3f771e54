"""parse_logs.py on fabricated run dirs: exact mean/std, incomplete seeds flagged."""
import csv
import json
import math

import numpy as np

import pytest

from conftest import run_main
from distdiff import DistDiffError
from distdiff.stats import mean_std, paired_difference


def fake_run(exp, seed, best, last, tbv=None):
    run = exp / f"seed{seed}"
    run.mkdir(parents=True)
    res = {"best_acc": best, "last_acc": last, "epochs": 3, "seed": seed, "n_train": 30}
    if tbv is not None:
        res["test_at_best_val"] = tbv
    (run / "results.json").write_text(json.dumps(res))


def parse_logs(capsys, *argv):
    """parse_logs.py in-process; returns (stdout, stderr)."""
    run_main("parse_logs", *argv)
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_multi_gives_exact_mean_and_sample_std(tmp_path, capsys):
    exp = tmp_path / "digits" / "resnet_small_unpretrained_lr0.1"
    for seed, (best, last) in enumerate([(80.0, 78.0), (82.0, 79.0), (84.0, 83.0)], start=1):
        fake_run(exp, seed, best, last, tbv=last - 1)
    (exp / "seed4").mkdir()  # started, never finished
    out, err = parse_logs(capsys, exp, "--multi")
    assert "82.00 ± 2.00" in out            # best: mean 82, sample std 2
    assert "80.00 ± 2.65" in out            # last: std of (78, 79, 83) = 2.6458
    assert "warning: 1 incomplete" in err
    rows = list(csv.DictReader(open(exp / "summary_multi.csv")))
    assert rows[0]["n"] == "3" and rows[0]["incomplete"] == "1"
    assert math.isclose(float(rows[0]["last_acc_std"]), np.std([78, 79, 83], ddof=1))


def test_parent_dir_gives_one_row_per_experiment(tmp_path, capsys):
    for name, base in (("resnet_small_unpretrained_lr0.1", 70.0), ("resnet_small_unpretrained_sd_lr0.1", 90.0)):
        for seed in (1, 2):
            fake_run(tmp_path / "digits" / name, seed, base + seed, base)
    out, _ = parse_logs(capsys, tmp_path / "digits", "--multi", "--csv", tmp_path / "all.csv")
    table = [line for line in out.splitlines() if line.startswith("| resnet")]
    assert len(table) == 2 and "71.50 ± 0.71" in table[0] and "91.50 ± 0.71" in table[1]
    assert len(list(csv.DictReader(open(tmp_path / "all.csv")))) == 2


def test_without_multi_lists_seeds(tmp_path, capsys):
    exp = tmp_path / "exp"
    fake_run(exp, 1, 50.0, 40.0, tbv=39.0)
    fake_run(exp, 2, 60.0, 45.0)
    (exp / "seed3").mkdir()
    out, _ = parse_logs(capsys, exp)
    rows = list(csv.DictReader(out.splitlines()))
    assert [(r["seed"], r["best_acc"], r["last_acc"], r["test_at_best_val"]) for r in rows[:2]] == \
        [("1", "50.0", "40.0", "39.0"), ("2", "60.0", "45.0", "")]
    assert rows[2]["seed"] == "seed3" and rows[2]["status"] == "incomplete"
    assert list(csv.DictReader(open(exp / "summary_seeds.csv"))) == rows


def test_paired_difference_matches_hand_computation():
    treated, control = {1: 91.0, 2: 92.0, 3: 90.0, 4: 93.0}, {1: 90.0, 2: 90.5, 3: 90.0, 4: 91.0}
    res = paired_difference(treated, control)
    diffs = np.array([1.0, 1.5, 0.0, 2.0])
    half = 3.182446305284263 * diffs.std(ddof=1) / 2.0  # t(0.975, df=3)
    assert math.isclose(res["mean"], 1.125) and res["n"] == 4
    assert math.isclose(res["high"] - res["mean"], half, rel_tol=1e-9)
    assert mean_std([]) [2] == 0 and math.isnan(mean_std([5.0])[1])


def test_empty_dir_is_an_error(tmp_path):
    with pytest.raises(DistDiffError, match="no seed<N>/ run directories found"):
        run_main("parse_logs", tmp_path, "--multi")


def test_paired_differences_against_a_baseline(tmp_path, capsys):
    for seed, (sd, dd) in enumerate([(90.0, 91.0), (92.0, 92.5), (91.0, 93.0)], start=1):
        fake_run(tmp_path / "a_distdiff", seed, dd + 1, dd, tbv=dd)
        fake_run(tmp_path / "b_sd", seed, sd + 1, sd, tbv=sd)
    out, _ = parse_logs(capsys, tmp_path, "--multi", "--paired", "b_sd")
    row = next(line for line in out.splitlines() if line.startswith("| a_distdiff") and "[" in line)
    diffs = np.array([1.0, 0.5, 2.0])
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert f"+{diffs.mean():.2f} [{diffs.mean() - half:+.2f}, {diffs.mean() + half:+.2f}]" in row
    with pytest.raises(DistDiffError, match="--paired 'nope' is not among"):
        run_main("parse_logs", tmp_path, "--multi", "--paired", "nope")


def test_include_and_seeds_keep_aug_rows_separate_and_comparable(tmp_path, capsys):
    root = tmp_path / "digits"
    for name, base in (("resnet_small_unpretrained_lr0.1", 70.0), ("resnet_small_unpretrained_lr0.1_aug-mixup", 80.0),
                       ("resnet_small_unpretrained_sd_x5_lr0.1", 90.0)):
        for seed in (1, 2, 3, 4):
            fake_run(root / name, seed, base + seed, base + seed)
    out, _ = parse_logs(capsys, root, "--multi", "--seeds", "1", "2", "3",
                        "--include", "resnet_small_unpretrained_lr0.1", "--include", "resnet_small_unpretrained_lr0.1_aug-*")
    table = [line for line in out.splitlines() if line.startswith("| resnet")]
    assert [line.split(" | ")[0] for line in table] == ["| resnet_small_unpretrained_lr0.1",
                                                       "| resnet_small_unpretrained_lr0.1_aug-mixup"]
    assert "| 3 | 72.00 ± 1.00" in table[0] and "| 3 | 82.00 ± 1.00" in table[1]  # seed 4 left out
    with pytest.raises(DistDiffError, match="no experiment under .* matches --include nothing"):
        run_main("parse_logs", root, "--multi", "--include", "nothing*")


def test_authors_mode_prints_their_lines_with_the_population_std(tmp_path, capsys):
    """What the authors' parse_logs.py prints for the same runs: best_accuracy of each
    results.yaml (the key the training writes), then mean +- np.std (ddof 0)."""
    exp = tmp_path / "exp"
    for seed, best in ((1, 80.0), (2, 82.0), (3, 84.0)):
        fake_run(exp, seed, best, best - 1)
        (exp / f"seed{seed}" / "results.yaml").write_text(f"best_accuracy: {best}\n")
    out, _ = parse_logs(capsys, exp, "--multi", "--authors")
    lines = out.strip().splitlines()
    assert lines[:3] == [f"Accuracy of {exp}/seed{s}/results.yaml is {b}" for s, b in ((1, 80.0), (2, 82.0), (3, 84.0))]
    assert lines[3] == f"Average  of 3 files is 82.00 +- {np.std([80.0, 82.0, 84.0]):.2f}" == "Average  of 3 files is 82.00 +- 1.63"
    assert not (exp / "summary_multi.csv").exists()
    with pytest.raises(DistDiffError, match="--authors .* takes only --multi"):
        parse_logs(capsys, exp, "--multi", "--authors", "--seeds", "1")
