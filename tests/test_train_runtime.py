"""How classifier training uses the machine: DataLoader workers per device type, the decoded-image
cache's budget, --eval_every (summary, results, selection, resume), one-line errors for bad values,
and scripts/run_jobs.sh spreading training runs over GPUs."""
import json
import subprocess

import pytest
import torch
import yaml

import distdiff.engine as engine
from conftest import REPO, read_summary, run_main
from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff.engine import MAX_AUTO_WORKERS, loader_workers, summarize
from distdiff.training import side_by_side_jobs

QUICK = ["--batch_size", "8", "--threads", "1"]  # 4 steps/epoch on the 30-image 3-shot set
MB = 1 << 20


def run_dir(out, seed=1):
    return out / "digits" / "resnet_small_unpretrained_lr0.1" / f"seed{seed}"


# ---------------------------------------------------------------------------
# Pure rules: workers, cache budget, results over evaluated epochs
# ---------------------------------------------------------------------------

def test_auto_workers_are_the_main_process_on_the_cpu_and_the_cores_on_cuda():
    assert loader_workers("auto", "cpu", cores=16) == 0  # the CPU demo keeps its speed and numbers
    assert loader_workers("auto", "cuda", cores=4) == 4
    assert loader_workers("auto", "cuda", cores=64) == MAX_AUTO_WORKERS == 16
    assert loader_workers("auto", "cuda") == min(len(engine.os.sched_getaffinity(0)), 16)
    assert loader_workers("auto", "cuda", cores=32, jobs=4) == 8  # 4 runs side by side share the cores
    assert loader_workers("auto", "cuda", cores=2, jobs=4) == 1
    assert loader_workers("auto", "cpu", cores=32, jobs=4) == 0
    for device_type in ("cpu", "cuda"):  # an explicit number wins
        assert loader_workers(3, device_type, cores=16) == 3
        assert loader_workers("0", device_type, cores=16) == 0


@pytest.mark.parametrize("bad", [-1, "-2", "many", 1.5, True])
def test_bad_workers_are_one_line_errors(bad):
    with pytest.raises(DistDiffError, match="--workers .*auto or a number"):
        loader_workers(bad, "cuda")


def test_cache_budget_auto_is_the_need_within_a_share_of_available_memory():
    gib = 1 << 30
    # Everything fits: the budget is what the splits need (rounded up to whole MB).
    assert ds.cache_budget_mb("auto", 5000 * MB + 1, 100 * gib)[0] == 5001
    # Capped at 25 % of what is available, divided among the processes running side by side.
    assert ds.cache_budget_mb("auto", 50 * gib, 100 * gib)[0] == 25 * 1024
    assert ds.cache_budget_mb("auto", 50 * gib, 100 * gib, processes=4)[0] == 25 * 1024 // 4
    mb, reason = ds.cache_budget_mb("auto", 50 * gib, 100 * gib, processes=4)
    assert "25% of 102400 MB available / 4 training processes" in reason
    assert ds.cache_budget_mb("auto", gib, None)[0] == ds.FALLBACK_CACHE_MB  # memory unknown
    # An explicit number wins, 0 included.
    assert ds.cache_budget_mb(0, MB, 100 * gib)[0] == 0
    assert ds.cache_budget_mb("700", 50 * gib, 100 * gib)[0] == 700
    with pytest.raises(DistDiffError, match="--cache_mb -5: use auto or a number of MB"):
        ds.cache_budget_mb(-5, MB, gib)


def test_available_memory_is_within_the_machine():
    total = next(int(line.split()[1]) << 10 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert 0 < ds.available_memory() <= total


def test_side_by_side_jobs_come_from_the_launcher():
    assert side_by_side_jobs({}) == 1
    assert side_by_side_jobs({"DISTDIFF_TRAIN_JOBS": "4"}) == 4
    with pytest.raises(DistDiffError, match="DISTDIFF_TRAIN_JOBS='0'"):
        side_by_side_jobs({"DISTDIFF_TRAIN_JOBS": "0"})


def test_cache_estimate_is_exact_for_centre_crops(digits_ready):
    head, _ = ds.test_transform(32, 36, split=True)
    folder = ds.load_split(digits_ready, "test")
    assert ds.estimate_cache_bytes(folder, head) == 3 * 32 * 32 * len(folder)


def test_summarize_ignores_epochs_without_evaluation():
    def row(epoch, val, test):
        return {"epoch": epoch, "val_acc": val, "test_acc": test}
    history = [row(1, None, None), row(2, 50.0, 60.0), row(3, None, None), row(4, 50.0, 70.0), row(5, 40.0, 65.0)]
    results = summarize(history, seed=1, n_train=30, seconds=1.0)
    assert (results["best_acc"], results["best_epoch"], results["last_acc"], results["epochs"]) == (70.0, 4, 65.0, 5)
    # The first evaluated epoch with the best val accuracy.
    assert (results["best_val_epoch"], results["best_val_acc"], results["test_at_best_val"]) == (2, 50.0, 60.0)
    no_val = summarize([row(1, None, None), row(2, None, 30.0)], seed=1, n_train=30, seconds=1.0)
    assert no_val["best_epoch"] == 2 and "best_val_epoch" not in no_val


# ---------------------------------------------------------------------------
# Training runs on digits
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def every_epoch(tmp_path_factory, digits_ready):
    """3 epochs evaluated every epoch: the reference for the --eval_every runs."""
    out = tmp_path_factory.mktemp("every")
    run_main("train_original", "digits", "--epochs", "3", "--output", out, *QUICK)
    return run_dir(out)


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_eval_every_two_evaluates_epochs_two_and_three_only(tmp_path, every_epoch):
    run_main("train_original", "digits", "--epochs", "3", "--eval_every", "2", "--output", tmp_path, *QUICK)
    run = run_dir(tmp_path)
    rows = read_summary(run)
    assert [(r["val_acc"] != "", r["test_acc"] != "") for r in rows] == [(False, False), (True, True), (True, True)]
    # Skipping a pass changes nothing else: same losses, and the same accuracies where evaluated.
    reference = read_summary(every_epoch)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in reference]
    assert [r["test_acc"] for r in rows[1:]] == [r["test_acc"] for r in reference[1:]]
    results = json.loads((run / "results.json").read_text())
    test = {int(r["epoch"]): float(r["test_acc"]) for r in rows[1:]}
    val = {int(r["epoch"]): float(r["val_acc"]) for r in rows[1:]}
    best_val_epoch = 2 if val[2] >= val[3] else 3
    assert results["epochs"] == 3 and results["last_acc"] == test[3]
    assert results["best_acc"] == max(test.values()) and results["best_epoch"] in (2, 3)
    assert results["best_val_epoch"] == best_val_epoch and results["test_at_best_val"] == test[best_val_epoch]
    # The guide is selected among the evaluated epochs.
    assert torch.load(run / "model_best.pth.tar", weights_only=True)["epoch"] == best_val_epoch
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["eval_every"], args["workers"], args["workers_resolved"]) == (2, "auto", 0)
    assert args["cache_mb"] == "auto" and args["cache_mb_resolved"] >= 1  # digits fits: all cached


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of an epoch."""


def crash_in_epoch(monkeypatch, epoch):
    """Make engine.train_one_epoch raise Killed on its `epoch`-th call."""
    real, calls = engine.train_one_epoch, []

    def train_one_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise Killed
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)
    return lambda: monkeypatch.setattr(engine, "train_one_epoch", real)


@pytest.mark.slow
def test_resume_after_an_epoch_without_evaluation(tmp_path, every_epoch, monkeypatch):
    flags = ["digits", "--epochs", "3", "--eval_every", "2", "--output", tmp_path, *QUICK]
    restore = crash_in_epoch(monkeypatch, 2)  # last.pt holds epoch 1, which had no evaluation
    with pytest.raises(Killed):
        run_main("train_original", *flags)
    restore()
    assert [r["test_acc"] for r in read_summary(run_dir(tmp_path))] == [""]
    assert not (run_dir(tmp_path) / "model_best.pth.tar").exists()  # nothing selected yet
    run_main("train_original", *flags)
    assert "resuming" in (run_dir(tmp_path) / "log.txt").read_text()
    rows, reference = read_summary(run_dir(tmp_path)), read_summary(every_epoch)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in reference]
    assert [r["test_acc"] for r in rows] == ["", reference[1]["test_acc"], reference[2]["test_acc"]]


@pytest.mark.slow
def test_worker_processes_resume_exactly(tmp_path, digits_ready, monkeypatch):
    """With DataLoader workers the augmentation is drawn in the workers, seeded per epoch: a resumed
    run repeats an uninterrupted one exactly."""
    flags = ["digits", "--epochs", "3", "--workers", "2", *QUICK]
    run_main("train_original", *flags, "--output", tmp_path / "straight")
    restore = crash_in_epoch(monkeypatch, 3)
    with pytest.raises(Killed):
        run_main("train_original", *flags, "--output", tmp_path / "killed")
    restore()
    run_main("train_original", *flags, "--output", tmp_path / "killed")
    straight, resumed = (read_summary(run_dir(tmp_path / d)) for d in ("straight", "killed"))
    key = [(r["train_loss"], r["train_acc"], r["val_acc"], r["test_acc"]) for r in straight]
    assert [(r["train_loss"], r["train_acc"], r["val_acc"], r["test_acc"]) for r in resumed] == key
    assert yaml.safe_load((run_dir(tmp_path / "killed") / "args.yaml").read_text())["workers_resolved"] == 2


@pytest.mark.parametrize("flag,value,message", [
    ("--eval_every", "0", "argument --eval_every/--eval-every: '0' is not an integer >= 1"),
    ("--workers", "-1", "argument --workers/-j: '-1' is not auto or an integer >= 0"),
    ("--cache_mb", "lots", "argument --cache_mb/--cache-mb: 'lots' is not auto or an integer >= 0"),
])
def test_bad_values_are_one_line_errors_before_any_work(tmp_path, flag, value, message):
    with pytest.raises(DistDiffError, match=message):
        run_main("train_original", "digits", flag, value, "--output", tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# scripts/run_jobs.sh: training runs over GPUs
# ---------------------------------------------------------------------------

def run_jobs(tmp_path, commands, **env):
    """Source run_jobs.sh in bash and run `commands` (bash command lines) in tmp_path."""
    exports = "".join(f"{k}={v!r}; " for k, v in env.items())
    args = " ".join("'" + c.replace("'", "'\\''") + "'" for c in commands)
    script = f"source {REPO / 'scripts' / 'run_jobs.sh'}; {exports}run_jobs {args}"
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def job(j, seconds):
    """A stand-in training run: logs its index, its GPU, the runs side by side that it was told of,
    and how many runs hold its GPU (itself included) when it starts."""
    gpu = "${CUDA_VISIBLE_DEVICES-none}"
    return (f"touch running_{gpu}_{j}; echo {j} {gpu} $DISTDIFF_TRAIN_JOBS $(ls running_{gpu}_* | wc -l) >> log; "
            f"sleep {seconds}; rm running_{gpu}_{j}")


def read_log(tmp_path):
    """{job index: (gpu, DISTDIFF_TRAIN_JOBS, runs on that gpu)}"""
    rows = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    return {int(j): (gpu, int(jobs), int(busy)) for j, gpu, jobs, busy in rows}


@pytest.mark.slow
def test_run_jobs_spreads_runs_round_robin_one_per_gpu(tmp_path):
    # Uneven lengths: later runs take whichever GPU has just been freed.
    seconds = [0.1, 0.6, 0.3, 0.2, 0.1, 0.4, 0.1, 0.2]
    proc = run_jobs(tmp_path, [job(j, s) for j, s in enumerate(seconds)], GPUS="2 5 7", JOBS="3")
    assert proc.returncode == 0, proc.stderr
    log = read_log(tmp_path)
    assert sorted(log) == list(range(len(seconds)))
    assert [log[j][0] for j in range(3)] == ["2", "5", "7"]  # the first runs go round-robin
    assert {gpu for gpu, _, _ in log.values()} == {"2", "5", "7"}
    assert {busy for _, _, busy in log.values()} == {1}  # never two runs on one GPU
    assert {jobs for _, jobs, _ in log.values()} == {3}


def test_run_jobs_places_more_runs_per_gpu_only_when_jobs_says_so(tmp_path):
    assert run_jobs(tmp_path, [job(j, 0.3) for j in range(4)], GPUS="0", JOBS="2").returncode == 0
    assert max(busy for _, _, busy in read_log(tmp_path).values()) == 2


def test_run_jobs_without_gpus_leaves_the_device_alone(tmp_path):
    proc = run_jobs(tmp_path, [job(0, 0), "exit 1", job(2, 0)], JOBS="2")
    assert proc.returncode == 1  # a failed command fails the batch, after every command ran
    log = read_log(tmp_path)
    assert sorted(log) == [0, 2] and {(gpu, jobs) for gpu, jobs, _ in log.values()} == {("none", 2)}
