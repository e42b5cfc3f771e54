"""train_original.py end to end on digits: files, metrics, resume after SIGKILL, no-op rerun."""
import csv
import json
import signal
import subprocess
import sys
import time

import yaml

from conftest import REPO, run_script, script_env

QUICK = ["--batch_size", "8", "--threads", "1"]  # 4 steps/epoch on the 30-image 3-shot set


def run_dir(out, lr="0.1", seed=1):
    return out / "digits" / f"resnet_small_unpretrained_lr{lr}" / f"seed{seed}"


def read_summary(path):
    with open(path / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_positional_form_writes_all_run_files(tmp_path, digits_ready):
    run_script("train_original.py", "digits", "resnet_small", "0.1", "False", "0",
               "--epochs", "8", "--output", tmp_path, *QUICK)
    run = run_dir(tmp_path)
    for name in ("args.yaml", "log.txt", "summary.csv", "results.json", "results.yaml", "last.pt",
                 "model_best.pth.tar"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 8 and results["seed"] == 1 and results["n_train"] == 30
    assert results["best_acc"] >= results["last_acc"]
    assert results["last_acc"] > 30.0, results  # chance is 10 %
    assert "test_at_best_val" in results and "best_val_acc" in results
    assert yaml.safe_load((run / "results.yaml").read_text())["best_accuracy"] == results["best_acc"]
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["arch"] == "resnet_small" and args["hflip"] is False and args["image_size"] == 32
    assert len(read_summary(run)) == 8


def test_named_flags_match_positional_run_dir(tmp_path, digits_ready):
    run_script("train_original.py", "--dataset", "digits", "--arch", "resnet_small", "--lr", "0.05",
               "--seed", "2", "--epochs", "1", "--output", tmp_path, *QUICK)
    assert (run_dir(tmp_path, "0.05", 2) / "results.json").is_file()


def test_complete_run_is_a_noop(tmp_path, digits_ready):
    args = ["train_original.py", "digits", "--epochs", "2", "--output", tmp_path, *QUICK]
    run_script(*args)
    results = run_dir(tmp_path) / "results.json"
    before = results.stat().st_mtime_ns
    proc = run_script(*args)
    assert "is complete" in proc.stdout
    assert results.stat().st_mtime_ns == before


def test_sigkill_then_rerun_resumes_to_same_result(tmp_path, digits_ready):
    epochs = ["--epochs", "14"]
    run_script("train_original.py", "digits", *epochs, "--output", tmp_path / "straight", *QUICK)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "train_original.py", "digits", *epochs, "--output", str(killed), *QUICK]
    proc = subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    summary = run_dir(killed) / "summary.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if summary.is_file() and len(read_summary(run_dir(killed))) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir(killed) / "results.json").exists(), "killed too late to test resume"
    rerun = run_script(*cmd[1:])
    assert "resuming" in rerun.stdout
    resumed, straight = read_summary(run_dir(killed)), read_summary(run_dir(tmp_path / "straight"))
    assert [r["epoch"] for r in resumed] == [str(e) for e in range(1, 15)]
    # Same data order, augmentation RNG and optimizer state: the accuracies match exactly.
    assert [r["test_acc"] for r in resumed] == [r["test_acc"] for r in straight]
    assert not list(run_dir(killed).glob(".*.tmp"))


def test_equal_iteration_epochs():
    from distdiff.training import equal_iteration_epochs
    assert equal_iteration_epochs(100, 30, 180, 64) == 33   # 100 steps / 3 steps per epoch
    assert equal_iteration_epochs(100, 30, 54, 64) == 100   # still one step per epoch
    assert equal_iteration_epochs(10, 3030, 18180, 64) == 2  # 480 steps / 285 per epoch -> 2
