"""Shared fixtures: run the real scripts in subprocesses, offline, with small settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def script_env():
    """Environment for script subprocesses: offline, one thread, repo importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    return env


def run_script(*args, check=True, timeout=600, cwd=REPO):
    """Run `python <script> args...` from the repo root; returns CompletedProcess."""
    cmd = [sys.executable, *[str(a) for a in args]]
    proc = subprocess.run(cmd, cwd=cwd, env=script_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_one_line_error(proc, *needles):
    """Non-zero exit, no traceback, and a final 'error: ...' line naming the problem."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), proc.stderr[-2000:]
    for needle in needles:
        assert needle.lower() in last.lower(), last
    return last


@pytest.fixture(scope="session")
def digits_ready():
    """The embedded digits dataset exported under data/digits (idempotent)."""
    from distdiff.datasets import ensure_prepared, get_dataset
    ensure_prepared(get_dataset("digits"))
    return get_dataset("digits")


def save_random_guide(path, classes=tuple(str(i) for i in range(10))):
    """A randomly initialised resnet_small for 32 px digits, saved in the checkpoint format
    engine.fit writes (what load_classifier reads): tests that only need *a* guide skip training."""
    import torch

    from distdiff import datasets as ds
    from models.classifiers import create_classifier

    torch.manual_seed(0)
    model = create_classifier("resnet_small", len(classes))
    meta = {"arch": "resnet_small", "num_classes": len(classes), "classes": list(classes), "dataset": "digits",
            "image_size": 32, "resize_size": 36, "mean": list(ds.IMAGENET_MEAN), "std": list(ds.IMAGENET_STD),
            "pretrained": False}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return model.eval()
