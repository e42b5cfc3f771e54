"""expand_distdiff.py end to end on a tiny SD pipeline built here (2 classes x 3 images).

Shard invariance, SIGKILL + resume, batch invariance, energies in the manifest, --verify and
the bad inputs of the design's section 6.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_main, script_env
from embedded.rehearsal import save_random_guide
from distdiff import DistDiffError

CLASSES = ("disc", "ring")


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
    """A folder dataset, a random guide for its classes and an untrained tiny pipeline."""
    from embedded.prior import build_tiny_pipeline

    root = tmp_path_factory.mktemp("expand")
    tree = root / "tree"
    for split, n in (("train", 3), ("test", 2)):
        for c, kind in enumerate(CLASSES):
            (tree / split / kind).mkdir(parents=True)
            for i in range(n):
                draw_shape(kind, 100 * c + 10 * (split == "test") + i).save(tree / split / kind / f"{kind}{i}.png")
    (tree / "dataset.yaml").write_text("val_per_class: 0\n")  # every source expanded (val: tests/test_own_dataset.py)
    guide = root / "guide.pth.tar"
    save_random_guide(guide, CLASSES)  # the guidance needs a differentiable feature map, not a good one
    pipe = build_tiny_pipeline(root / "pipe", [f"a photo of a {c}" for c in CLASSES])
    return {"root": root, "tree": tree, "guide": guide, "pipe": pipe}


def expand_args(setup, out, *extra, batch=4):
    return ["--dataset", f"folder:{setup['tree']}", "--model", setup["pipe"], "--guide_ckpt", setup["guide"],
            "--out", out, "--expand_ratio", "4", "--num_steps", "10", "--guidance_step", "4",
            "--batch_size", str(batch), "--threads", "1", *extra]


def expand(setup, out, *extra, batch=4):
    return run_main("expand_distdiff", *expand_args(setup, out, *extra, batch=batch))


def png_bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*.png"))}


def manifest(out):
    return [json.loads(line) for p in sorted(Path(out).glob("manifest_shard*.jsonl"))
            for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted single-shard transform-guided run, every item's energy measured (the other
    runs measure the default every 8th: the measurement repeats model calls and never changes an image)."""
    out = setup["root"] / "ref"
    expand(setup, out, "--record_energy", "1")
    return {"out": out, "files": png_bytes(out), "log": (out / "log.txt").read_text()}


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_outputs_layout_and_summary(reference):
    files = reference["files"]
    assert len(files) == 2 * 3 * 4  # 24 items: 3 ownership blocks of 8, one per shard below
    assert "disc/disc0_expand_0.png" in files and "ring/ring2_expand_1.png" in files
    for name in ("args.yaml", "log.txt", "prototypes.npz", "manifest_shard0.jsonl"):
        assert (reference["out"] / name).is_file(), name
    assert "written 24, skipped 0" in reference["log"] and "images/s" in reference["log"]
    img = Image.open(reference["out"] / "disc" / "disc0_expand_0.png")
    assert img.size == (16, 16) and img.mode == "RGB"  # the tiny pipeline's native size


@pytest.mark.slow
def test_three_shards_give_identical_bytes_and_verify(setup, reference, monkeypatch, capsys):
    out = setup["root"] / "sharded"
    expand(setup, out, "--split", "1", "--total_split", "3", "--record_energy", "8")
    capsys.readouterr()
    assert expand(setup, out, "--total_split", "3", "--verify") == 1
    assert "rerun shards [0, 2]" in capsys.readouterr().out
    # Temps as a SIGKILLed writer leaves them: a shard clears those of its own items only.
    temps = [out / f"{Path(name).parent}/.{Path(name).name}.killed.tmp" for name in reference["files"]
             if not (out / name).is_file()]
    for tmp in temps:
        tmp.write_bytes(b"torn")
    expand(setup, out, "--split", "0", "--total_split", "3", "--record_energy", "8")
    kept = [t for t in temps if t.is_file()]
    assert 0 < len(kept) < len(temps)
    assert all(not (t.parent / t.name[1:].removesuffix(".killed.tmp")).is_file() for t in kept)
    monkeypatch.setenv("RANK", "2")  # the torchrun/accelerate variables pick the shard
    monkeypatch.setenv("WORLD_SIZE", "3")
    expand(setup, out, "--record_energy", "8")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert png_bytes(out) == reference["files"]
    assert not list(out.rglob("*.tmp"))
    assert expand(setup, out, "--verify") == 0
    assert {(r["source"], r["k"]) for r in manifest(out)} == {(r["source"], r["k"]) for r in manifest(reference["out"])}
    measured = {s: [json.loads(line)["position"] for line in (out / f"manifest_shard{s}.jsonl").read_text().splitlines()
                    if json.loads(line)["energy_before"] is not None] for s in range(3)}
    assert measured == {0: [0], 1: [8], 2: [16]}  # one item of each shard's block: equal shares


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_files(setup, reference):
    out = setup["root"] / "killed"
    ratio = ["--expand_ratio", "2"]  # 12 items: the reference's copies 0 and 1
    cmd = [sys.executable, "expand_distdiff.py", *map(str, expand_args(setup, out, *ratio))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(out.rglob("*.png"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list(out.rglob("*.png"))) < 12, "killed too early or too late"
    expand(setup, out, *ratio)
    assert "skipped" in (out / "log.txt").read_text()
    assert png_bytes(out) == {name: data for name, data in reference["files"].items() if int(name[-5]) < 2}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def max_pixel_diffs(out, reference, copies=4):
    """Per image, the largest uint8 difference from the reference run's image of the same name;
    `out` holds the reference's copies k < `copies` (each item's draws depend on (seed, source,
    copy) only, so a run with a lower --expand_ratio makes a subset of the same images)."""
    files = png_bytes(out)
    assert files.keys() == {name for name in reference["files"] if int(name[-5]) < copies}
    return [np.abs(np.asarray(Image.open(out / name), np.int16) -
                   np.asarray(Image.open(reference["out"] / name), np.int16)).max() for name in files]


@pytest.mark.slow
def test_batch_size_one_matches_within_rounding(setup, reference):
    out = setup["root"] / "batch1"
    expand(setup, out, "--expand_ratio", "2", batch=1)
    diffs = max_pixel_diffs(out, reference, copies=2)
    # Batched matmuls round differently from single ones; after uint8 quantisation that is at
    # most a level or two, never a different image.
    assert max(diffs) <= 2, diffs


@pytest.mark.slow
def test_channels_last_matches_within_rounding(setup, reference):
    """NHWC convolutions are a speed option only: the same images up to float rounding."""
    out = setup["root"] / "nhwc"
    expand(setup, out, "--channels_last", "True")
    assert max(max_pixel_diffs(out, reference)) <= 2


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_energy_drops_for_most_items_with_transform_and_direct(setup, reference):
    records = manifest(reference["out"])
    dropped = np.mean([r["energy_after"] < r["energy_before"] for r in records])
    assert dropped > 0.5, dropped
    out = setup["root"] / "direct"
    expand(setup, out, "--guidance", "direct", "--expand_ratio", "1", "--record_energy", "1")
    records = manifest(out)
    assert len(records) == 6
    assert np.mean([r["energy_after"] < r["energy_before"] for r in records]) > 0.5


@pytest.mark.slow
def test_the_classifier_energy_reference_lowers_the_guides_cross_entropy(setup, reference):
    """--energy classifier (docs/guidance_variants.md, V4): the paper's mechanics on the guide's
    cross-entropy for the source's class. The recorded energy is another quantity than the
    prototype energy of the same items, the step lowers it for most items, every image differs
    from the prototype energy's, and with step 0 the images are the noise-only ones (no energy is
    evaluated, the draws are shared)."""
    out = setup["root"] / "classifier"
    expand(setup, out, "--energy", "classifier", "--expand_ratio", "2", "--record_energy", "1")
    records = manifest(out)
    assert len(records) == 12 and all(r["guidance"] == "guided" for r in records)
    assert np.mean([r["energy_after"] < r["energy_before"] for r in records]) > 0.5
    prototype = {r["path"]: r["energy_before"] for r in manifest(reference["out"])}
    assert all(r["energy_before"] != prototype[r["path"]] for r in records)  # copies k < 2: the same draws
    assert "energy: classifier" in (out / "args.yaml").read_text()
    images = png_bytes(out)
    assert len(images) == 12 and all(data != reference["files"][name] for name, data in images.items())
    noise, noise_classifier = setup["root"] / "noise2", setup["root"] / "noise2_classifier"
    expand(setup, noise, "--step_size", "0", "--expand_ratio", "2", "--record_energy", "0")
    expand(setup, noise_classifier, "--step_size", "0", "--expand_ratio", "2", "--record_energy", "0",
           "--energy", "classifier")
    assert png_bytes(noise_classifier) == png_bytes(noise)


@pytest.mark.slow
def test_radius_zero_reproduces_guidance_none_byte_for_byte(setup, reference):
    """Guided and unguided runs share every item's noise: a guidance step projected back onto
    the unguided latent (radius 0) must give exactly the unguided images."""
    none, zero = setup["root"] / "none", setup["root"] / "radius0"
    expand(setup, none, "--guidance", "none", "--expand_ratio", "2")
    expand(setup, zero, "--radius", "0", "--expand_ratio", "2")
    records = manifest(none)
    assert len(records) == 12 and all(r["guidance"] == "none" and r["energy_before"] is None for r in records)
    unguided = png_bytes(none)
    assert png_bytes(zero) == unguided
    guided = {name: data for name, data in reference["files"].items() if name in unguided}
    assert len(guided) == 12 and all(guided[name] != data for name, data in unguided.items())  # the default radius changes every image


@pytest.mark.slow
def test_energy_is_measured_on_every_nth_item_and_never_changes_an_image(setup, reference):
    out = setup["root"] / "sampled"
    expand(setup, out, "--record_energy", "2", "--expand_ratio", "2", batch=2)  # 12 items: positions 0, 2, ..., 10
    measured = sorted(r["position"] for r in manifest(out) if r["energy_before"] is not None)
    assert measured == list(range(0, 12, 2)) and len(manifest(out)) == 12
    assert max(max_pixel_diffs(out, reference, copies=2)) <= 2  # batch 2 vs 4: float rounding only
    off = setup["root"] / "off"
    expand(setup, off, "--record_energy", "False", "--expand_ratio", "2", batch=2)
    assert png_bytes(off) == png_bytes(out) and all(r["energy_before"] is None for r in manifest(off))


def test_energy_recording_is_shared_equally_by_the_shards_of_a_4_shard_run():
    """The default rule (every 8th item of the work list) measures one item of every block of 8,
    so each shard measures the same share whatever the shard count or batch size."""
    from distdiff import shards

    items = shards.work_items([(f"/d/c{i % 3}/{i}.png", i % 3) for i in range(13)], 5)  # 65 items, 9 blocks
    for batch in (1, 3, 8):
        per_shard = [sum(it.position % 8 == 0 for _, b in shards.shard_batches(items, s, 4, batch) for it in b)
                     for s in range(4)]
        assert per_shard == [3, 2, 2, 2]  # blocks 0-8 dealt round robin: shard 0 owns one more block


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_changed_settings_in_same_out_dir_are_refused(setup, reference):
    with pytest.raises(DistDiffError, match="other settings .*strength"):
        expand(setup, reference["out"], "--strength", "0.7")


@pytest.mark.slow
def test_a_finished_or_empty_shard_stops_before_torch_loads(setup, reference, tmp_path):
    """A finished shard rerun, a shard that owns no item and --verify plan the work and stop in a
    fresh interpreter without importing torch (its imports and the models' are seconds per
    process); the finished shard still checks its settings, --precision auto against the one
    its args.yaml records."""
    code = ("import sys, expand_distdiff\nfrom distdiff.options import run_cli\n"
            "try:\n    run_cli(expand_distdiff.main, sys.argv[1:])\n"
            "finally:\n    print('torch', 'torch' in sys.modules)")

    def fresh(out, *extra):
        argv = [str(a) for a in expand_args(setup, out, *extra)]
        return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=script_env(), capture_output=True,
                              text=True, timeout=300)
    before = {p: os.stat(p).st_mtime_ns for p in Path(reference["out"]).rglob("*.png")}
    for out, extra, said in ((reference["out"], [], "skipped 24 (every image present)"),
                             (tmp_path / "empty", ["--split", "3", "--total_split", "4"], "no items in this shard"),
                             (reference["out"], ["--verify"], "24/24 images present")):
        proc = fresh(out, *extra)
        assert proc.returncode == 0 and said in proc.stdout + proc.stderr, (extra, proc.stdout, proc.stderr)
        assert proc.stdout.strip().endswith("torch False"), (extra, proc.stdout)
    assert json.loads((tmp_path / "empty" / "shard3.json").read_text())["status"] == "done"
    assert {p: os.stat(p).st_mtime_ns for p in Path(reference["out"]).rglob("*.png")} == before
    with pytest.raises(DistDiffError, match="other settings .*precision: 'fp32' -> 'bf16'"):
        expand(setup, reference["out"], "--precision", "bf16")


@pytest.mark.slow
def test_a_new_batch_size_resumes_the_same_out_dir(setup, reference):
    """Execution settings never lock an output dir: after a shard ran at batch 4, the whole run
    resumes at batch 2 (e.g. after an out-of-memory error), with the same images up to rounding."""
    out = setup["root"] / "rebatched"
    expand(setup, out, "--split", "1", "--total_split", "3")
    expand(setup, out, "--channels_last", "True", batch=2)
    assert "written 16, skipped 8" in (out / "log.txt").read_text()
    assert max(max_pixel_diffs(out, reference)) <= 2
    assert expand(setup, out, "--verify", batch="auto") == 0


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_keeps_the_images(setup, reference, monkeypatch):
    from distdiff.sampler import GuidedSampler

    sample, sizes = GuidedSampler.sample, []

    def sample_or_oom(self, mean, std, labels, draws, record=None):
        sizes.append(len(draws))
        if len(draws) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return sample(self, mean, std, labels, draws, record)
    monkeypatch.setattr(GuidedSampler, "sample", sample_or_oom)
    out = setup["root"] / "oom"
    expand(setup, out, "--expand_ratio", "2")  # 12 items: 1 at a time after the first batch's halvings
    log = (out / "log.txt").read_text()
    assert "batch size halved to 2" in log and "batch size halved to 1" in log
    assert sizes[:3] == [4, 2, 1] and len(sizes) == 14 and set(sizes[3:]) == {1}  # halved once for the rest of the run
    assert max(max_pixel_diffs(out, reference, copies=2)) <= 2
    monkeypatch.setattr(GuidedSampler, "sample", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory.")))
    with pytest.raises(DistDiffError, match="out of memory at batch size 1"):
        expand(setup, setup["root"] / "oom1")


@pytest.mark.slow
def test_a_vanished_guidance_gradient_stops_the_run_unless_allowed(setup, monkeypatch, capsys):
    """An energy whose gradient is exactly zero (as an fp16 underflow leaves it) is not a guidance
    step. When every item so far loses it (a block of 8: systematic) the shard stops before
    writing that batch; the first batch's 4 items are kept unguided and marked. With
    --allow_unguided the items are kept unguided (the same bytes as --guidance none) and marked."""
    from distdiff.sampler import GuidedSampler

    energy = GuidedSampler.image_energy
    monkeypatch.setattr(GuidedSampler, "image_energy", lambda self, x0, labels: energy(self, x0, labels).detach() + 0 * x0.sum())
    out = setup["root"] / "zero_grad"
    with pytest.raises(DistDiffError, match=r"guidance lost for 8 of the 8 items of this shard so far \(0 non-finite, "
                                            r"4 all-zero gradients in block 0\); nothing of this batch was written"):
        expand(setup, out, "--expand_ratio", "2")
    assert len(list(out.rglob("*.png"))) == 4 and {r["guidance"] for r in manifest(out)} == {"zero_gradient"}
    expand(setup, out, "--expand_ratio", "2", "--allow_unguided")
    assert {r["guidance"] for r in manifest(out)} == {"zero_gradient"} and len(manifest(out)) == 12
    assert "guidance lost (kept unguided): 0 non-finite, 8 all-zero gradients" in (out / "log.txt").read_text()
    none = setup["root"] / "zero_grad_none"
    expand(setup, none, "--expand_ratio", "2", "--guidance", "none")
    assert png_bytes(out) == png_bytes(none)


@pytest.mark.slow
def test_one_bad_item_is_kept_unguided_and_does_not_stop_the_shard(setup, reference, monkeypatch):
    """One item of 24 whose gradient vanishes (under 1 % is judged from the 100th item on, and
    not every item is lost): it is marked and kept unguided, the others are the reference's."""
    from distdiff.sampler import GuidedSampler

    energy, passes = GuidedSampler.image_energy, []

    def first_row_lost_once(self, x0, labels):
        values = energy(self, x0, labels)
        if torch.is_grad_enabled() and len(passes) < 2:  # the first guided pass: P = 2 look-ahead steps
            passes.append(1)
            values = torch.cat([values[:1].detach() + 0 * x0[:1].sum(), values[1:]])
        return values
    monkeypatch.setattr(GuidedSampler, "image_energy", first_row_lost_once)
    out = setup["root"] / "one_bad"
    assert expand(setup, out) == 0
    lost = [r for r in manifest(out) if r["guidance"] != "guided"]
    assert [(r["position"], r["guidance"]) for r in lost] == [(0, "zero_gradient")]
    files = png_bytes(out)
    assert files.keys() == reference["files"].keys()
    assert [name for name in files if files[name] != reference["files"][name]] == ["disc/disc0_expand_0.png"]


# ---------------------------------------------------------------------------
# Bad inputs: refused before any heavy work, nothing written
# ---------------------------------------------------------------------------

def test_split_out_of_range(setup, tmp_path):
    with pytest.raises(DistDiffError, match=r"--split 3 must be in \[0, --total_split 3\)"):
        expand(setup, tmp_path / "o", "--split", "3", "--total_split", "3")
    assert not (tmp_path / "o").exists()


def test_guide_with_wrong_class_count(setup, tmp_path):
    state = torch.load(setup["guide"], weights_only=True)
    state["meta"]["num_classes"] = 7
    bad = tmp_path / "bad_guide.pth.tar"
    torch.save(state, bad)
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--guide_ckpt") + 1] = bad
    with pytest.raises(DistDiffError, match="7 classes but the dataset has 2"):
        run_main("expand_distdiff", *args)
    assert not (tmp_path / "o").exists()


def test_missing_model_path_fails_before_prototypes(setup, tmp_path):
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--model") + 1] = tmp_path / "no" / "model"
    with pytest.raises(DistDiffError, match="not found; train the embedded prior with scripts/train_prior.py"):
        run_main("expand_distdiff", *args)
    assert not (tmp_path / "o").exists()  # no prototypes, no args.yaml


def test_hub_id_missing_from_the_cache_names_cache_and_command(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--model") + 1] = "CompVis/stable-diffusion-v1-4"
    with pytest.raises(DistDiffError) as err:
        run_main("expand_distdiff", *args)
    message = str(err.value)
    assert "CompVis/stable-diffusion-v1-4" in message and "empty_cache" in message
    assert "hf download CompVis/stable-diffusion-v1-4" in message and "\n" not in message


def test_corrupt_source_image(setup, tmp_path):
    import shutil
    tree = tmp_path / "tree"
    shutil.copytree(setup["tree"], tree)
    (tree / "train" / "ring" / "ring9.png").write_bytes(b"\x89PNG broken")
    args = expand_args(setup, tmp_path / "o")
    args[args.index("--dataset") + 1] = f"folder:{tree}"
    with pytest.raises(DistDiffError, match="ring9.png"):
        run_main("expand_distdiff", *args)


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


def one_item_per_setting(setup, configs):
    """{name: (image, outcome)} of the first source, copy 0, under each GuidanceConfig (M = 4 of 10
    steps, fp32): every setting starts from the same draws."""
    from distdiff.expansion import load_sources
    from distdiff.generation import build_prototypes, load_guide
    from distdiff.pipeline import load_pipeline
    from distdiff.registry import get_dataset
    from distdiff.sampler import GuidedSampler, draw_item
    from distdiff.settings import SampleConfig

    cpu = torch.device("cpu")
    pipe = load_pipeline(setup["pipe"], cpu, torch.float32)
    spec = get_dataset(f"folder:{setup['tree']}")
    sources = load_sources(spec)
    guide, guide_input, meta = load_guide(setup["guide"], 2, cpu)
    protos = build_prototypes(setup["root"] / "components.npz", spec, sources, guide, meta, cpu, setup["guide"], "kmeans", 3)
    prompts = [[f"a photo of a {c}"] for c in CLASSES]
    results = {}
    for name, cfg in configs.items():
        sampler = GuidedSampler(pipe, guide, guide_input, protos, prompts, SampleConfig(num_steps=10),
                                dataclasses.replace(cfg, guidance_step=4), cpu)
        mean, std = sampler.encode_sources([sources[0][0]])
        draws = [draw_item(torch.Generator().manual_seed(0), sampler.latent_shape(), 1, 1, False)]
        images, status = sampler.sample(mean, std, torch.tensor([0]), draws)
        results[name] = (images[0], status.tolist())
    return results


def test_the_guidance_components_share_their_noise_and_differ_only_where_they_should(setup):
    """The controls of the energy-or-noise study on one item: identity start with rho 0 is plain
    img2img to the bit; the random perturbation alone (rho 0), the gradient alone (identity start)
    and both each move the image, and the three differ from each other."""
    from distdiff.settings import GuidanceConfig

    results = one_item_per_setting(setup, {
        "none": GuidanceConfig(mode="none"), "nothing": GuidanceConfig(step_size=0, transform_start="identity"),
        "noise": GuidanceConfig(step_size=0), "gradient": GuidanceConfig(transform_start="identity"),
        "both": GuidanceConfig()})
    images = {name: image for name, (image, _) in results.items()}
    assert torch.equal(images["nothing"], images["none"])
    moved = ["noise", "gradient", "both"]
    assert all(not torch.equal(images[a], images[b]) for a in moved for b in ["none"] + moved if a != b)


@pytest.mark.slow
def test_the_landed_variants_reproduce_their_noise_controls_at_step_zero(setup):
    """--transform_point landed (V1, and V2 from the identity) shares the paper's draws: with no
    step it gives the noise-only images (V1) or plain img2img (V2) to the bit; with steps it moves
    them, and the two variants differ."""
    from distdiff.settings import GUIDED, GuidanceConfig

    results = one_item_per_setting(setup, {
        "none": GuidanceConfig(mode="none"), "noise": GuidanceConfig(step_size=0),
        "v1_zero": GuidanceConfig(transform_point="landed", offset_step=0),
        "v1": GuidanceConfig(transform_point="landed"),
        "v2_zero": GuidanceConfig(transform_point="landed", transform_start="identity", guidance_iters=0),
        "v2": GuidanceConfig(transform_point="landed", transform_start="identity", guidance_iters=5, offset_step=0.5)})
    images = {name: image for name, (image, _) in results.items()}
    assert torch.equal(images["v1_zero"], images["noise"]) and torch.equal(images["v2_zero"], images["none"])
    assert not torch.equal(images["v1"], images["noise"]) and not torch.equal(images["v2"], images["none"])
    assert not torch.equal(images["v1"], images["v2"])
    assert results["v1"][1] == results["v2"][1] == [GUIDED]


@pytest.mark.slow
def test_the_authors_precision_split_runs_encoders_in_fp32_and_the_rest_in_half(setup):
    """--encode_precision fp32 (the authors encode sources and prompts before the fp16 cast) and
    --guide_precision pipeline (their guide in half during guidance), on the CPU in bf16: every
    model call gets its own dtype, and the guidance still moves the latent with finite values."""
    from distdiff.expansion import load_sources
    from distdiff.generation import build_prototypes, load_guide
    from distdiff.pipeline import load_pipeline
    from distdiff.registry import get_dataset
    from distdiff.sampler import GuidedSampler, draw_item
    from distdiff.settings import GUIDED, GuidanceConfig, SampleConfig

    cpu, half = torch.device("cpu"), torch.bfloat16
    pipe = load_pipeline(setup["pipe"], cpu, half, encode_dtype=torch.float32)
    assert pipe.unet.dtype == half and next(pipe.vae.decoder.parameters()).dtype == half
    assert next(pipe.vae.encoder.parameters()).dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    spec = get_dataset(f"folder:{setup['tree']}")
    sources = load_sources(spec)
    guide, guide_input, meta = load_guide(setup["guide"], 2, cpu)
    protos = build_prototypes(setup["root"] / "split_precision.npz", spec, sources, guide, meta, cpu, setup["guide"], "kmeans", 3)
    guide.to(half)  # after the prototypes, as expand_distdiff.py does
    sampler = GuidedSampler(pipe, guide, guide_input, protos, [[f"a photo of a {c}"] for c in CLASSES],
                            SampleConfig(num_steps=10), GuidanceConfig(guidance_step=4), cpu)
    assert sampler.prompt_embeds.dtype == half
    mean, std = sampler.encode_sources([sources[0][0]])
    assert mean.dtype == half
    draws = [draw_item(torch.Generator().manual_seed(0), sampler.latent_shape(), 1, 1, False)]
    images, status = sampler.sample(mean, std, torch.tensor([0]), draws)
    assert torch.isfinite(images.float()).all() and status.tolist() == [GUIDED]


# ---------------------------------------------------------------------------
# Training reads only complete expansions
# ---------------------------------------------------------------------------

TRAIN_TINY = ["--epochs", "1", "--arch", "resnet_small", "--image_size", "16", "--resize_size", "16",
              "--threads", "1", "--device", "cpu"]


def train_on(setup, expanded, tmp_path, *extra):
    return run_main("train_expand", f"folder:{setup['tree']}", "--exp", "x", "--expanded_dir", expanded,
                    "--output", tmp_path / "runs", *TRAIN_TINY, *extra)


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_a_half_written_expansion_is_refused_naming_the_missing_shard(setup, tmp_path, capsys):
    """Shard 1 of 2 written (8 of 24 items, both classes present): training stops before any work
    with one line naming shard 0 and its command; --allow_partial trains and records the fraction."""
    from distdiff.options import run_cli

    out = tmp_path / "half"
    expand(setup, out, "--split", "1", "--total_split", "2")
    assert len(png_bytes(out)) == 8 and {p.parent.name for p in out.rglob("*.png")} == set(CLASSES)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda argv: train_on(setup, out, tmp_path))
    assert stop.value.code != 0
    line = str(stop.value.code)
    assert line.startswith("error: expansion ") and "\n" not in line
    assert "8 of 24 images written (33.3 %)" in line and "shard(s) 0 of 2 unfinished (0: never started)" in line
    assert "--split <i> --total_split 2` for each i" in line and "--allow_partial" in line
    assert f"expand_distdiff.py --dataset folder:{setup['tree']}" in line
    assert not (tmp_path / "runs").exists()  # refused before any run dir was made
    results = train_on(setup, out, tmp_path, "--allow_partial")
    assert results["n_train"] == 6 + 8
    args = next((tmp_path / "runs").rglob("args.yaml")).read_text()
    import yaml
    recorded = yaml.safe_load(args)
    assert recorded["allow_partial"] is True
    assert recorded["expansions"] == [{"dir": str(out), "verified": True, "expected": 24, "written": 8,
                                       "fraction": round(8 / 24, 6), "unguided": 0}]


@pytest.mark.slow
def test_the_missing_shards_command_completes_the_expansion(setup, reference, tmp_path):
    """The command the error names, run for shard 0, makes the expansion whole and trainable."""
    from distdiff import shards

    out = tmp_path / "completed"
    expand(setup, out, "--split", "1", "--total_split", "2")
    check = shards.check_expansion(out)
    assert check.owners == {0: "never started"} and check.command[:2] == ["python", "expand_distdiff.py"]
    assert run_main("expand_distdiff", *check.command[2:]) == 0
    assert png_bytes(out) == reference["files"]
    assert shards.check_expansion(out).complete
    assert json.loads((out / "shard0.json").read_text())["status"] == "done"


def test_a_folder_not_written_by_the_expander_needs_allow_partial(setup, tmp_path):
    foreign = tmp_path / "foreign"
    for kind in CLASSES:
        (foreign / kind).mkdir(parents=True)
        draw_shape(kind, 7).save(foreign / kind / "x.png")
    with pytest.raises(DistDiffError, match=r"not written by expand_distdiff.py .*--allow_partial"):
        train_on(setup, foreign, tmp_path)
    assert train_on(setup, foreign, tmp_path, "--allow_partial")["n_train"] == 6 + 2


def test_shard_command_re_aims_every_spelling_of_the_shard_flags():
    from distdiff.shards import shard_command

    assert shard_command(["--dataset", "d", "--shard-id=3", "--num_shards", "4", "--gpu", "0"], 1, 4) == \
        ["python", "expand_distdiff.py", "--dataset", "d", "--gpu", "0", "--split", "1", "--total_split", "4"]


def test_the_stop_rule_counts_lost_items_over_the_shard_and_its_manifest():
    from distdiff.generation import GuidanceLosses
    from distdiff.settings import GUIDED, ZERO_GRADIENT

    def batch(lost, size=8):
        return torch.tensor([ZERO_GRADIENT] * lost + [GUIDED] * (size - lost))
    losses = GuidanceLosses([{"guidance": "guided"}] * 91 + [{"guidance": "nonfinite"}])  # a resumed shard
    assert losses.check(batch(0), 0, False)["zero_gradient"] == 0  # 1 of 100: not over 1 %
    with pytest.raises(DistDiffError, match=r"guidance lost for 2 of the 101 items of this shard so far"):
        losses.check(batch(1, 1), 1, False)
    assert (losses.lost, losses.seen) == (1, 100)  # the refused batch is not counted
    assert losses.check(batch(1, 1), 1, True)["zero_gradient"] == 1  # --allow_unguided never stops
    early = GuidanceLosses()
    early.check(batch(4, 4), 0, False)  # 4 of 4: too few to call it systematic, kept unguided
    early.check(batch(3, 3), 0, False)
    with pytest.raises(DistDiffError, match="8 of the 8 items"):
        early.check(batch(1, 1), 1, False)
    mixed = GuidanceLosses()
    for _ in range(10):  # one lost item in every batch of 8 early on: not systematic, judged at 100
        mixed.check(batch(1), 0, False)
    with pytest.raises(DistDiffError, match="13 of the 104 items"):
        for _ in range(3):
            mixed.check(batch(1), 0, False)
