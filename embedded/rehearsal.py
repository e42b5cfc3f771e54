"""Stand-ins with the real shapes, for rehearsing the paper's path without downloads.

* `fabricate_caltech101(root)`: a folder laid out like the Caltech-101 download that torchvision
  reads (`<root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg`), with BACKGROUND_Google
  and Faces_easy among a few classes, JPEGs at real-world sizes and aspect ratios, one grayscale.
* `install_in_hf_cache(folder, repo_id, cache_dir)`: put a diffusers folder into a Hugging Face
  cache under a Hub id, so that `distdiff.pipeline.load_pipeline(repo_id)` finds it without
  network, as it finds a real cached snapshot (the SD-1.4 stand-in of embedded/sd_shapes.py has
  SD-1.4's file layout).

* `fabricate_folder_dataset(root, classes, train, test)`: a Caltech-sized folder dataset for the
  training benchmarks.
* `save_random_guide(path, classes)`: a random resnet_small in the guide checkpoint format, for
  runs that need *a* guide, not a trained one (the tests, studies/argv_trail.py).

tests/jobs/paper_path.py, tests/test_hub.py, studies/gpu_check.py, studies/bench_memory.py and
studies/bench_train_start.py use them.
"""
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Real Caltech-101 images are mostly around 300x200; a few are portrait or square.
SIZES = ((300, 200), (200, 300), (300, 225), (240, 240), (267, 200))
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes", "ant")
FAKE_COMMIT = "0000000000000000000000000000000000000000"


def fabricate_image(label, index, size, seed=0):
    """A JPEG-able RGB image: a class-specific shape and colour on a noisy background."""
    rng = np.random.default_rng([seed, label, index])
    width, height = size
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in (np.array([60, 140, 220]) * (1 + label) % 256))
    cx, cy = width / 2 + rng.uniform(-20, 20), height / 2 + rng.uniform(-20, 20)
    r = min(width, height) * rng.uniform(0.2, 0.35)
    box = (cx - r, cy - r, cx + r, cy + r)
    [draw.ellipse, draw.rectangle, draw.pieslice][label % 3](box, fill=colour, **({"start": 30, "end": 300}
                                                                                 if label % 3 == 2 else {}))
    return image


def fabricate_folder_dataset(root, classes, train, test):
    """A folder dataset of Caltech-like JPEGs, <root>/{train,test}/class_<i>/<n>.jpg (`train` and
    `test` images per class), once: a `done` marker makes reruns instant (the benchmarks use it)."""
    root = Path(root)
    if (root / "done").is_file():
        return root
    for split, per_class in (("train", train), ("test", test)):
        for label in range(classes):
            folder = root / split / f"class_{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                index = i + (train if split == "test" else 0)
                fabricate_image(label, index, SIZES[(label + index) % len(SIZES)]).save(folder / f"{i:04d}.jpg",
                                                                                         quality=90)
    (root / "done").write_text("ok\n")
    return root


def fabricate_caltech101(root, classes=CLASSES, per_class=5, seed=0):
    """Write a Caltech-101-shaped download under `root`; returns the 101_ObjectCategories dir.

    File names follow the real archive (image_0001.jpg, ...), which torchvision's Caltech101
    indexes by position. Sizes cycle through SIZES; the second image of the second class is
    grayscale (the real set has a few), so the converter's RGB handling is exercised.
    """
    categories = Path(root) / "caltech101" / "101_ObjectCategories"
    for label, name in enumerate(classes):
        folder = categories / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = fabricate_image(label, index, SIZES[(label + index) % len(SIZES)], seed)
            if label == 1 and index == 1:
                image = image.convert("L")
            image.save(folder / f"image_{index + 1:04d}.jpg", quality=90)
    return categories


def hf_snapshot(repo_id, cache_dir, commit=FAKE_COMMIT):
    """The (emptied) snapshot folder of `repo_id` at `commit` in `cache_dir`, with refs/main
    pointing at it: the layout huggingface_hub reads, models--<owner>--<name>/{refs/main,
    snapshots/<commit>/}. Write a diffusers folder into it to make the Hub id load offline."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def install_in_hf_cache(folder, repo_id, cache_dir, commit=FAKE_COMMIT):
    """Copy a diffusers folder into `cache_dir` as the snapshot of `repo_id` at `commit`."""
    snapshot = hf_snapshot(repo_id, cache_dir, commit)
    shutil.copytree(folder, snapshot)
    return snapshot


def build_rehearsal(root, repo_id="CompVis/stable-diffusion-v1-4", classes=CLASSES, per_class=5):
    """Both stand-ins under `root`: the Caltech-101-shaped download (root/downloads) and a tiny
    pipeline in SD-1.4's layout installed as `repo_id` in a Hugging Face cache (root/hf/hub).
    Returns {"downloads": path, "hf_home": path, "hf_hub_cache": path}."""
    from embedded.sd_shapes import save_rehearsal_pipeline

    root = Path(root)
    fabricate_caltech101(root / "downloads", classes, per_class)
    kept = [c for c in classes if c not in ("BACKGROUND_Google", "Faces_easy")]
    folder = save_rehearsal_pipeline(root / "pipeline", [f"a photo of a {c}" for c in kept])
    install_in_hf_cache(folder, repo_id, root / "hf" / "hub")
    shutil.rmtree(folder)
    return {"downloads": root / "downloads", "hf_home": root / "hf", "hf_hub_cache": root / "hf" / "hub"}


def save_random_guide(path, classes, image_size=32, resize_size=36):
    """A randomly initialised resnet_small saved in the checkpoint format engine.fit writes (what
    load_classifier reads): runs that only need *a* guide skip training. Returns the model."""
    import torch

    from distdiff import registry
    from models.classifiers import create_classifier

    torch.manual_seed(0)
    model = create_classifier("resnet_small", len(classes))
    meta = {"arch": "resnet_small", "num_classes": len(classes), "classes": list(classes), "dataset": "digits",
            "image_size": image_size, "resize_size": resize_size, "mean": list(registry.IMAGENET_MEAN),
            "std": list(registry.IMAGENET_STD), "pretrained": False}
    torch.save({"model": model.state_dict(), "meta": meta, "epoch": 0}, path)
    return model.eval()
