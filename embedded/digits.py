"""The embedded `digits` dataset: scikit-learn's 1,797 8x8 digits exported as 32x32 RGB PNGs.

Split files in data/digits/splits/*.txt (committed) list sklearn sample indices. They are drawn
once with a fixed seed, per class: 50 test, 20 val, 10 train10 (the first 3 of which form the
3-shot `train` split), and the rest `prior`, which only the diffusion prior ever sees.
"""
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from distdiff import DistDiffError
from distdiff.splits import per_class_split

logger = logging.getLogger(__name__)
SPLIT_SIZES = {"test": 50, "val": 20, "train10": 10}
SHOTS = 3
SPLIT_SEED = 0
SPLITS = ("train", "train10", "val", "test", "prior")
IMAGE_SIZE = 32


def make_splits(targets, seed=SPLIT_SEED):
    """Seeded per-class split of sample indices; returns {split: sorted index list}.

    Per class: 50 test, 20 val, then the 10 train10 images whose first 3 are the 3-shot train
    split, and the rest for the prior (one permutation per class, so the splits are disjoint).
    """
    sizes = [("test", SPLIT_SIZES["test"]), ("val", SPLIT_SIZES["val"]), ("train", SHOTS),
             ("train10_more", SPLIT_SIZES["train10"] - SHOTS)]
    chunks = per_class_split(targets, sizes, seed, rest="prior")
    splits = {name: chunks[name] for name in ("test", "val", "train", "prior")}
    splits["train10"] = sorted(chunks["train"] + chunks["train10_more"])
    return {name: splits[name] for name in SPLITS}


def read_splits(split_dir):
    """Read committed split files; None when any is missing."""
    paths = {name: Path(split_dir) / f"{name}.txt" for name in SPLITS}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {name: [int(line) for line in p.read_text().split()] for name, p in paths.items()}


def write_splits(split_dir, splits):
    """Write one index per line, sorted."""
    Path(split_dir).mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (Path(split_dir) / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def digit_to_image(pixels):
    """8x8 array in [0, 16] -> 32x32 RGB PIL image (bilinear upsampling, white ink on black)."""
    gray = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    return gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB")


def export_digits(root):
    """Export every split under `root` once; an interrupted export is redone from scratch."""
    root = Path(root)
    split_dir = root / "splits"
    splits = read_splits(split_dir)
    if splits is not None and all((root / name).is_dir() for name in SPLITS):
        return splits  # exported already (each split appears whole): scikit-learn need not load
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    digits = load_digits()
    if splits is None:
        splits = make_splits(digits.target)
        write_splits(split_dir, splits)
    elif splits != make_splits(digits.target):
        raise DistDiffError(f"{split_dir} differs from the seeded split; restore it with git checkout")
    for name in SPLITS:
        if (root / name).is_dir():
            continue
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
        try:
            for i in splits[name]:
                class_dir = tmp / str(digits.target[i])
                class_dir.mkdir(exist_ok=True)
                digit_to_image(digits.images[i]).save(class_dir / f"{i:04d}.png")
            try:
                os.replace(tmp, root / name)  # the split appears whole or not at all
            except OSError:
                if not (root / name).is_dir():
                    raise
                continue  # another process exported it meanwhile: the same seeded images
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("digits: wrote %d images to %s", len(splits[name]), root / name)
    return splits
