"""Image loading: the paper's transforms and ImageFolder splits with clear errors (the registry of
names, roots and prompts is distdiff/registry.py)."""
import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2
from tqdm.auto import tqdm

from distdiff import DistDiffError, augment
from distdiff.registry import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Transforms (paper: Resize 256 -> RandomRotation 15 -> RandomCrop 224 -> RandomHorizontalFlip)
# ---------------------------------------------------------------------------

def train_transform(image_size=224, resize_size=256, rotation=15.0, hflip=True,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, split=False, aug="default"):
    """The paper's training augmentation, ending in a normalised float tensor.

    With split=True it returns (head, tail): the deterministic decode-and-resize head, which
    `preload` runs once per image, and the random tail that runs every epoch. Composing the
    two gives exactly the unsplit transform, because the image is a tensor from the first step.
    `aug` adds a per-image augmentation (distdiff/augment.py) to the random tail.
    """
    head = [v2.ToImage(), v2.Resize(resize_size)]
    tail = [v2.RandomRotation(rotation), v2.RandomCrop(image_size)]
    if hflip:
        tail.append(v2.RandomHorizontalFlip())
    tail += augment.uint8_transforms(aug)  # AutoAugment/RandAugment work on uint8 images
    tail += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    tail += augment.normalized_transforms(aug, image_size)  # erased pixels become the mean (0)
    return (v2.Compose(head), v2.Compose(tail)) if split else v2.Compose(head + tail)


def test_transform(image_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, split=False):
    """Resize -> CenterCrop -> normalise: used for evaluation and for feature extraction.

    With split=True it returns (head, tail): the deterministic uint8 decode-resize-crop head
    (cached once by `preload`) and the float conversion.
    """
    head = [v2.ToImage(), v2.Resize(resize_size), v2.CenterCrop(image_size)]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return (v2.Compose(head), v2.Compose(tail)) if split else v2.Compose(head + tail)


# ---------------------------------------------------------------------------
# Loading ImageFolder splits with clear errors
# ---------------------------------------------------------------------------

def rgb_loader(path):
    """Open an image as RGB; unreadable files raise DistDiffError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DistDiffError(f"cannot read image {path}: {err}; delete or replace it") from None


def _check_images(folder):
    """Open every image once so that a corrupt file fails before training, not mid-epoch."""
    for path, _ in folder.samples:
        rgb_loader(path)


def image_folder(root, transform=None, hint="", verify=True):
    """torchvision ImageFolder with one-line errors for missing dirs and empty classes."""
    root = Path(root)
    if not root.is_dir():
        raise DistDiffError(f"dataset directory {root} not found" + (f"; run: {hint}" if hint else ""))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DistDiffError(f"{root} has no class folders; expected {root}/<class>/<image>")
    try:
        folder = tv_datasets.ImageFolder(root, transform=transform, loader=rgb_loader,
                                         allow_empty=False)
    except FileNotFoundError as err:
        raise DistDiffError(f"{root}: {str(err).splitlines()[0]} (an empty class folder?)") from None
    if verify:
        _check_images(folder)
    return folder


def load_split(spec, split, transform=None, verify=True):
    """One split of a registered dataset as an ImageFolder."""
    if split is None:
        return None
    return image_folder(spec.split_dir(split), transform, spec.prepare_hint, verify)


class Preloaded(torch.utils.data.Dataset):
    """An image folder whose deterministic head transform ran once: items are tail(head(image)).

    The head's uint8 outputs are kept in memory (a 224 px crop is 150 KB; the float32 tensor
    would be 4x that). Re-decoding and re-resizing the same few hundred PNGs every epoch was
    60 % of a digits training epoch.
    """

    def __init__(self, folder, head, tail):
        self.images = [head(folder.loader(path)) for path, _ in
                       tqdm(folder.samples, desc=f"cache {Path(folder.root).name}", leave=False,
                            disable=len(folder) < 2000, dynamic_ncols=True)]
        self.targets = list(folder.targets)
        self.classes = folder.classes
        self.tail = tail

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.tail(self.images[index]), self.targets[index]


class CacheBudget:
    """Bytes left for in-memory image caches; splits that do not fit are decoded per access."""

    def __init__(self, megabytes):
        self.left = int(megabytes) << 20

    def preload(self, folder, head, tail):
        """Preloaded(folder, head, tail) if its uint8 images fit the remaining budget, else the
        folder itself with the composed transform (the same items, decoded on every access).

        The size is estimated from the first image (exact for centre-cropped evaluation splits,
        approximate for resized training images of varying aspect ratio).
        """
        probe = head(folder.loader(folder.samples[0][0]))
        need = probe.numel() * probe.element_size() * len(folder)
        if need > self.left:
            logger.info("%s: %d images need ~%d MB in memory (%d MB of --cache_mb left); decoding "
                        "them every epoch instead", folder.root, len(folder), need >> 20, self.left >> 20)
            folder.transform = v2.Compose([head, tail])
            return folder
        self.left -= need
        return Preloaded(folder, head, tail)


def check_same_classes(expected, found, what):
    """Fail with the differing class names when two class lists disagree."""
    if list(expected) != list(found):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise DistDiffError(f"{what}: class folders differ from the dataset "
                            f"(missing {missing[:5]}, unexpected {extra[:5]})")
