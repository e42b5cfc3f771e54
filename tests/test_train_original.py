"""train_original.py on digits: files, metrics, resume after SIGKILL, no-op rerun, selection."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import REPO, read_summary, run_main, script_env

QUICK = ["--batch_size", "8", "--threads", "1"]  # 4 steps/epoch on the 30-image 3-shot set


def run_dir(out, lr="0.1", seed=1):
    return out / "digits" / f"resnet_small_unpretrained_lr{lr}" / f"seed{seed}"


@pytest.fixture(scope="module")
def eight_epochs(tmp_path_factory, digits_ready):
    out = tmp_path_factory.mktemp("train")
    run_main("train_original", "digits", "resnet_small", "0.1", "False", "0", "--epochs", "8", "--output", out, *QUICK,
             "--device", "cpu")  # the positional GPU index 0 is an error without CUDA
    return run_dir(out)


@pytest.mark.slow
def test_positional_form_writes_all_run_files(eight_epochs):
    run = eight_epochs
    for name in ("args.yaml", "log.txt", "summary.csv", "results.json", "results.yaml", "last.pt",
                 "model_best.pth.tar"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 8 and results["seed"] == 1 and results["n_train"] == 30
    assert results["last_acc"] > 30.0, results  # chance is 10 %
    assert yaml.safe_load((run / "results.yaml").read_text())["best_accuracy"] == results["best_acc"]
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["arch"] == "resnet_small" and args["hflip"] is False and args["image_size"] == 32
    assert args["guide_selection"] == "best_val"
    assert len(read_summary(run)) == 8


@pytest.mark.slow
def test_results_are_the_summary_read_three_ways(eight_epochs):
    """best_acc is the best test epoch (the paper's number), last_acc the last one, and
    test_at_best_val the test accuracy at the first epoch with the best val accuracy."""
    rows = read_summary(eight_epochs)
    test = [float(r["test_acc"]) for r in rows]
    val = [float(r["val_acc"]) for r in rows]
    results = json.loads((eight_epochs / "results.json").read_text())
    assert results["best_acc"] == max(test) and results["last_acc"] == test[-1]
    first_best_val = val.index(max(val))
    assert results["best_val_epoch"] == first_best_val + 1
    assert results["test_at_best_val"] == test[first_best_val]


@pytest.mark.slow
def test_guide_checkpoint_is_the_best_val_epoch(eight_epochs):
    best = torch.load(eight_epochs / "model_best.pth.tar", weights_only=True)
    results = json.loads((eight_epochs / "results.json").read_text())
    assert best["epoch"] == results["best_val_epoch"]  # selected on val, never on test
    assert best["meta"]["arch"] == "resnet_small" and best["meta"]["num_classes"] == 10


def test_named_flags_match_positional_run_dir(tmp_path, digits_ready):
    run_main("train_original", "--dataset", "digits", "--arch", "resnet_small", "--lr", "0.05",
             "--seed", "2", "--epochs", "1", "--output", tmp_path, *QUICK)
    assert (run_dir(tmp_path, "0.05", 2) / "results.json").is_file()


@pytest.mark.slow
def test_complete_run_is_a_noop(eight_epochs, capsys):
    results = eight_epochs / "results.json"
    before = results.stat().st_mtime_ns
    run_main("train_original", "digits", "--epochs", "8", "--output", eight_epochs.parents[2], *QUICK)
    assert "is complete" in capsys.readouterr().out
    assert results.stat().st_mtime_ns == before


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_same_result(tmp_path, digits_ready):
    epochs = ["--epochs", "10"]
    cmd = [sys.executable, "train_original.py", "digits", *epochs, "--output", str(tmp_path / "killed"), *QUICK]
    proc = subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The uninterrupted reference trains in this process meanwhile (same thread count, same numbers).
    run_main("train_original", "digits", *epochs, "--output", tmp_path / "straight", *QUICK)
    killed = run_dir(tmp_path / "killed")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "summary.csv").is_file() and len(read_summary(killed)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "killed too late to test resume"
    (killed / ".last.pt.killed.tmp").write_bytes(b"torn")  # what a kill during a save leaves
    run_main("train_original", "digits", *epochs, "--output", tmp_path / "killed", *QUICK)
    assert "resuming" in (killed / "log.txt").read_text()
    resumed, straight = read_summary(killed), read_summary(run_dir(tmp_path / "straight"))
    assert [r["epoch"] for r in resumed] == [str(e) for e in range(1, 11)]
    # Same data order, augmentation RNG and optimizer state: the accuracies match exactly.
    assert [r["test_acc"] for r in resumed] == [r["test_acc"] for r in straight]
    assert not list(killed.glob(".*.tmp"))


def test_equal_iteration_epochs():
    from distdiff.training import equal_iteration_epochs
    assert equal_iteration_epochs(100, 30, 180, 64) == 33   # 100 steps / 3 steps per epoch
    assert equal_iteration_epochs(100, 30, 54, 64) == 100   # still one step per epoch
    assert equal_iteration_epochs(10, 3030, 18180, 64) == 2  # 480 steps / 285 per epoch -> 2


@pytest.mark.slow
def test_preset_authors_trains_their_way_and_says_the_guide_was_selected_on_test(tmp_path, digits_ready):
    """--preset authors: Resize((s, s)) bicubic for the guide, bilinear for retraining, and the
    best test epoch kept as model_best (labelled in args.yaml); flags on the command line win."""
    import argparse

    from distdiff.options import add_train_expand_flags, parse_train_args

    def parse(script, *argv):
        return parse_train_args(add_train_expand_flags(argparse.ArgumentParser()), ["digits", *argv], script)
    guide = parse("original", "--preset", "authors")
    assert (guide.resize_mode, guide.interpolation, guide.guide_selection) == ("squash", "bicubic", "test")
    assert parse("expand", "--preset", "authors").interpolation == "bilinear"
    assert parse("original", "--preset", "authors", "--interpolation", "bilinear").interpolation == "bilinear"
    assert parse("original").guide_selection == "val"

    run_main("train_original", "digits", "--preset", "authors", "--epochs", "4", "--output", tmp_path, *QUICK)
    run = tmp_path / "digits" / "resnet_small_unpretrained_lr0.1_resize-squash_preset-authors" / "seed1"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["guide_selection"].startswith("best_test") and args["interpolation"] == "bicubic"
    test_acc = [float(row["test_acc"]) for row in read_summary(run)]
    best = torch.load(run / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == test_acc.index(max(test_acc)) + 1  # the first epoch with the best test accuracy


def test_bicubic_interpolation_reaches_the_resize():
    from torchvision.transforms import v2

    from distdiff import datasets as ds
    head, _ = ds.train_transform(32, [36, 36], 15.0, True, split=True, aug="default", interpolation="bicubic")
    resize = [t for t in head.transforms if isinstance(t, v2.Resize)][0]
    assert resize.interpolation == v2.InterpolationMode.BICUBIC and list(resize.size) == [36, 36]
    test_head, _ = ds.test_transform(32, 36, split=True)
    assert [t for t in test_head.transforms if isinstance(t, v2.Resize)][0].interpolation == v2.InterpolationMode.BILINEAR


def test_the_preset_transforms_are_the_authors(digits_ready):
    """Their train.py transforms, written out from their code: Resize((256, 256)) bicubic, then
    RandomRotation(15), RandomCrop(224), RandomHorizontalFlip, ImageNet normalisation; test:
    Resize((256, 256)) bicubic, CenterCrop(224). The preset's transforms have the same steps and
    parameters (the project caches the deterministic head, so it is split in two)."""
    import argparse

    from torchvision.transforms import v2

    from distdiff.options import add_train_flags, parse_train_args
    from distdiff.training import TrainConfig, build_transforms

    args = parse_train_args(add_train_flags(argparse.ArgumentParser()), ["caltech-101", "--preset", "authors"],
                            "original")
    (head, tail), (eval_head, _) = build_transforms(TrainConfig.from_args(args))
    steps = [t for t in head.transforms + tail.transforms if not isinstance(t, (v2.ToImage, v2.ToDtype))]
    resize, rotation, crop, flip, normalize = steps
    assert list(resize.size) == [256, 256] and resize.interpolation == v2.InterpolationMode.BICUBIC
    assert list(rotation.degrees) == [-15.0, 15.0] and list(crop.size) == [224, 224] and flip.p == 0.5
    assert list(normalize.mean) == [0.485, 0.456, 0.406] and list(normalize.std) == [0.229, 0.224, 0.225]
    test_resize, center = [t for t in eval_head.transforms if not isinstance(t, v2.ToImage)]
    assert list(test_resize.size) == [256, 256] and test_resize.interpolation == v2.InterpolationMode.BICUBIC
    assert list(center.size) == [224, 224]
