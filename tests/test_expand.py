"""expand_distdiff.py end to end on a tiny SD pipeline built here (3 classes x 4 images).

Shard invariance, SIGKILL + resume, batch invariance, energies in the manifest, --verify and
the bad inputs of DESIGN.md section 6.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, assert_one_line_error, run_script, script_env

CLASSES = ("disc", "ring", "square")


def draw_shape(kind, seed, size=32):
    """A distinctive, slightly varied 32x32 image per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-3, 3, 2)
    r = np.hypot(yy - cy, xx - cx)
    mask = {"disc": r < 9, "ring": (r > 6) & (r < 11),
            "square": (abs(yy - cy) < 8) & (abs(xx - cx) < 8)}[kind]
    img = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 40, 3).astype(np.uint8)
    img[mask] = [200, 220, 240]
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder dataset, a guide trained on it for 3 epochs and an untrained tiny pipeline."""
    from models.prior import build_tiny_pipeline

    root = tmp_path_factory.mktemp("expand")
    tree = root / "tree"
    for split, n in (("train", 4), ("test", 3)):
        for c, kind in enumerate(CLASSES):
            (tree / split / kind).mkdir(parents=True)
            for i in range(n):
                draw_shape(kind, 100 * c + 10 * (split == "test") + i).save(tree / split / kind / f"{kind}{i}.png")
    run_script("train_original.py", f"folder:{tree}", "--arch", "resnet_small", "--image_size", "32",
               "--resize_size", "36", "--epochs", "3", "--batch_size", "4", "--threads", "1",
               "--output", root / "ckpt")
    guide = next((root / "ckpt").rglob("model_best.pth.tar"))
    pipe = build_tiny_pipeline(root / "pipe", [f"a photo of a {c}" for c in CLASSES])
    return {"root": root, "tree": tree, "guide": guide, "pipe": pipe}


def expand_args(setup, out, *extra, batch=4):
    return ["expand_distdiff.py", "--dataset", f"folder:{setup['tree']}", "--model", setup["pipe"],
            "--guide_ckpt", setup["guide"], "--out", out, "--expand_ratio", "2", "--num_steps", "10",
            "--guidance_step", "4", "--batch_size", str(batch), "--threads", "1", *extra]


def png_bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*.png"))}


def manifest(out):
    return [json.loads(line) for p in sorted(Path(out).glob("manifest_shard*.jsonl"))
            for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted single-shard transform-guided run."""
    out = setup["root"] / "ref"
    proc = run_script(*expand_args(setup, out))
    return {"out": out, "files": png_bytes(out), "log": proc.stdout}


def test_outputs_layout_and_summary(reference):
    files = reference["files"]
    assert len(files) == 3 * 4 * 2
    assert "disc/disc0_expand_0.png" in files and "square/square3_expand_1.png" in files
    for name in ("args.yaml", "log.txt", "prototypes.npz", "manifest_shard0.jsonl"):
        assert (reference["out"] / name).is_file(), name
    assert "written 24, skipped 0" in reference["log"] and "images/s" in reference["log"]
    img = Image.open(reference["out"] / "disc" / "disc0_expand_0.png")
    assert img.size == (16, 16) and img.mode == "RGB"  # the tiny pipeline's native size


def test_three_shards_give_identical_bytes_and_verify(setup, reference):
    out = setup["root"] / "sharded"
    run_script(*expand_args(setup, out, "--split", "1", "--total_split", "3"))
    proc = run_script(*expand_args(setup, out, "--total_split", "3", "--verify"), check=False)
    assert proc.returncode == 1 and "rerun shards [0, 2]" in proc.stdout
    run_script(*expand_args(setup, out, "--split", "0", "--total_split", "3"))
    env_shard = dict(script_env(), RANK="2", WORLD_SIZE="3")  # the torchrun/accelerate variables
    subprocess.run([sys.executable, *map(str, expand_args(setup, out))], cwd=REPO, env=env_shard,
                   check=True, capture_output=True)
    assert png_bytes(out) == reference["files"]
    assert run_script(*expand_args(setup, out, "--verify")).returncode == 0
    assert {(r["source"], r["k"]) for r in manifest(out)} == {(r["source"], r["k"]) for r in manifest(reference["out"])}


def test_sigkill_then_rerun_gives_identical_files(setup, reference):
    out = setup["root"] / "killed"
    cmd = [sys.executable, *map(str, expand_args(setup, out))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(out.rglob("*.png"))) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list(out.rglob("*.png"))) < 24, "killed too early or too late"
    rerun = run_script(*cmd[1:])
    assert "skipped" in rerun.stdout
    assert png_bytes(out) == reference["files"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def max_pixel_diffs(out, reference):
    """Per image, the largest uint8 difference from the reference run's image of the same name."""
    files = png_bytes(out)
    assert files.keys() == reference["files"].keys()
    return [np.abs(np.asarray(Image.open(out / name), np.int16) -
                   np.asarray(Image.open(reference["out"] / name), np.int16)).max() for name in files]


def test_batch_size_one_matches_within_rounding(setup, reference):
    out = setup["root"] / "batch1"
    run_script(*expand_args(setup, out, batch=1))
    diffs = max_pixel_diffs(out, reference)
    # Batched matmuls round differently from single ones; after uint8 quantisation that is at
    # most a level or two, never a different image.
    assert max(diffs) <= 2, diffs


def test_channels_last_matches_within_rounding(setup, reference):
    """NHWC convolutions are a speed option only: the same images up to float rounding."""
    out = setup["root"] / "nhwc"
    run_script(*expand_args(setup, out, "--channels_last", "True"))
    diffs = max_pixel_diffs(out, reference)
    assert max(diffs) <= 2, diffs


def test_energy_drops_for_most_items_with_transform_and_direct(setup, reference):
    records = manifest(reference["out"])
    dropped = np.mean([r["energy_after"] < r["energy_before"] for r in records])
    assert dropped > 0.5, dropped
    out = setup["root"] / "direct"
    run_script(*expand_args(setup, out, "--guidance", "direct", "--expand_ratio", "1"))
    records = manifest(out)
    assert len(records) == 12
    assert np.mean([r["energy_after"] < r["energy_before"] for r in records]) > 0.5


def test_guidance_none_records_no_energy_and_shares_noise(setup, reference):
    out = setup["root"] / "none"
    run_script(*expand_args(setup, out, "--guidance", "none"))
    records = manifest(out)
    assert len(records) == 24 and all(r["energy_before"] is None for r in records)
    # Same per-item noise as the guided run: the images differ, but only by the guidance.
    changed = [png_bytes(out)[k] != v for k, v in reference["files"].items()]
    assert any(changed)


def test_changed_settings_in_same_out_dir_are_refused(setup, reference):
    proc = run_script(*expand_args(setup, reference["out"], "--strength", "0.7"), check=False)
    assert_one_line_error(proc, "other settings", "strength")


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------

def test_split_out_of_range(setup, tmp_path):
    proc = run_script(*expand_args(setup, tmp_path / "o", "--split", "3", "--total_split", "3"), check=False)
    assert_one_line_error(proc, "--split 3")
    assert not (tmp_path / "o").exists()


def test_guide_with_wrong_class_count(setup, tmp_path):
    state = torch.load(setup["guide"], weights_only=False)
    state["meta"]["num_classes"] = 7
    bad = tmp_path / "bad_guide.pth.tar"
    torch.save(state, bad)
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--guide_ckpt") + 1] = bad
    assert_one_line_error(run_script(*args, check=False), "7 classes", "3")


def test_missing_model_path(setup, tmp_path):
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--model") + 1] = tmp_path / "no" / "model"
    assert_one_line_error(run_script(*args, check=False), "not found", "train_prior.py")


def test_corrupt_source_image(setup, tmp_path):
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(setup["tree"], tree)
    (tree / "train" / "ring" / "ring9.png").write_bytes(b"\x89PNG broken")
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--dataset") + 1] = f"folder:{tree}"
    assert_one_line_error(run_script(*args, check=False), "ring9.png")


def test_background_writer_reraises_a_failed_write_and_finishes_the_rest(tmp_path):
    from distdiff.shards import BackgroundWriter

    def write(name):
        if name == "bad":
            raise OSError("disk full")
        (tmp_path / name).write_text("ok")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter(max_pending=1) as writer:
            writer.submit(write, "a")
            writer.submit(write, "bad")
            writer.submit(write, "b")
            writer.submit(write, "c")
    assert (tmp_path / "a").is_file()
