"""Image folder trees (<root>/<class>/<image>) listed without torch.

The rule is torchvision's ImageFolder's: class folders sorted by name; under each, files found by
a sorted os.walk (following links), kept when their extension is one of IMG_EXTENSIONS (any
case), in sorted order. distdiff.datasets builds its ImageFolder from these functions, so the
training stages and the expander see one listing; it is written here because importing
torchvision costs about 4 s, and the expander's plan (which items exist, which this shard owns,
whether they are written) must be known before any model library loads: a shard with nothing
left to make then stops at once.
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distdiff import DistDiffError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def class_folders(root, hint=""):
    """Sorted class folder names under `root`, with one-line errors for a missing or empty tree."""
    root = Path(root)
    if not root.is_dir():
        raise DistDiffError(f"dataset directory {root} not found" + (f"; run: {hint}" if hint else ""))
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DistDiffError(f"{root} has no class folders; expected {root}/<class>/<image>")
    return classes


def class_samples(root, classes):
    """[(path, class index)] of every image under each of `classes`, in torchvision's order; a
    class folder without an image is an error."""
    samples, empty = [], []
    for label, name in enumerate(classes):
        found = [os.path.join(folder, fname)
                 for folder, _, fnames in sorted(os.walk(os.path.join(root, name), followlinks=True))
                 for fname in sorted(fnames) if fname.lower().endswith(IMG_EXTENSIONS)]
        samples += [(path, label) for path in found]
        if not found:
            empty.append(name)
    if empty:
        raise DistDiffError(f"{root}: no image in class folder(s) {', '.join(empty[:5])} (an empty class folder?); "
                            f"images end in {', '.join(IMG_EXTENSIONS)}")
    return samples


def rgb_loader(path):
    """Open an image as RGB, upright: a photo whose EXIF says it was taken sideways is turned as
    viewers show it (the authors' loaders do the same); unreadable files raise DistDiffError
    naming the file."""
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DistDiffError(f"cannot read image {path}: {err}; delete or replace it") from None


class Listing:
    """One split of a dataset as an ImageFolder without transforms holds it: root, classes and
    (path, label) samples; item i is (PIL image, label)."""

    loader = staticmethod(rgb_loader)

    def __init__(self, root, classes, samples):
        self.root, self.classes, self.samples = str(root), list(classes), list(samples)

    @property
    def targets(self):
        return [label for _, label in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.loader(path), label


def held_out(samples, classes, root, per_class, seed):
    """The paths of `per_class` images per class drawn from `samples` (seeded per class, so a
    class's draw does not depend on the others); a class too small to keep one image is an error."""
    by_class = {}
    for path, label in samples:  # sorted by class, then file name (torchvision's order)
        by_class.setdefault(label, []).append(path)
    held = set()
    for label, paths in sorted(by_class.items()):
        if len(paths) <= per_class:
            raise DistDiffError(f"class {classes[label]!r} has {len(paths)} image(s) in {root}: too few to "
                                f"hold out {per_class} for val and train on the rest; lower val_per_class in the "
                                "tree's dataset.yaml, add a val/ tree, or set val_per_class: 0 (no val split)")
        picks = np.random.default_rng([seed, label]).choice(len(paths), per_class, replace=False)
        held.update(paths[i] for i in picks)
    return held


def split_samples(spec, split, samples, classes):
    """The samples of `split` among those listed from its folder: where the val split is held out
    of train/ (spec.val_from_train), train leaves those images out and val is them."""
    if not (spec.val_from_train and split in (spec.train_split, spec.val_split)):
        return samples
    held = held_out(samples, classes, spec.split_dir(spec.train_split), spec.val_from_train, spec.val_seed)
    return [(path, label) for path, label in samples if (path in held) == (split == spec.val_split)]


def list_split(spec, split):
    """One split of a registered dataset as a Listing (no image is opened)."""
    folder = spec.split_dir(spec.train_split if spec.val_from_train and split == spec.val_split else split)
    classes = class_folders(folder, spec.prepare_hint)
    return Listing(folder, classes, split_samples(spec, split, class_samples(folder, classes), classes))
