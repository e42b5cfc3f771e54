"""Dataset registry: on-disk roots, class names, prompt templates, transforms and loaders.

Every dataset is an ImageFolder tree `data/<name>/<split>/<class>/*`. Class order is the sorted
folder order (torchvision's rule), so labels are stable across machines.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2

from distdiff import DistDiffError, augment
from distdiff.runs import REPO_ROOT

logger = logging.getLogger(__name__)
DATA_ROOT = REPO_ROOT / "data"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class DatasetSpec:
    """What the scripts need to know about one dataset."""
    name: str
    root: Path
    template: str = "a photo of a {}"
    train_split: str = "train"
    val_split: str | None = None
    test_split: str = "test"
    prompt_words: dict = field(default_factory=dict)  # folder name -> word used in prompts
    prepare_hint: str = ""

    def split_dir(self, split):
        """Directory of one split (train/val/test/...)."""
        return self.root / split

    def prompt_name(self, class_folder):
        """The class name as it appears in a prompt ("Faces_easy" -> "Faces easy")."""
        return self.prompt_words.get(class_folder, class_folder.replace("_", " "))

    def prompt(self, class_folder):
        """The full text prompt for one class."""
        return self.template.format(self.prompt_name(class_folder))


def _real(name, template, hint="python scripts/prepare_data.py {name}"):
    return DatasetSpec(name=name, root=DATA_ROOT / name, template=template,
                       prepare_hint=hint.format(name=name))


_DIGIT_WORDS = {str(i): w for i, w in enumerate(DIGIT_WORDS)}
_DIGITS_HINT = "python scripts/prepare_digits.py"
REGISTRY = {
    "digits": DatasetSpec("digits", DATA_ROOT / "digits", "a photo of the digit {}", "train",
                          "val", "test", _DIGIT_WORDS, _DIGITS_HINT),
    "digits10": DatasetSpec("digits10", DATA_ROOT / "digits", "a photo of the digit {}", "train10",
                            "val", "test", _DIGIT_WORDS, _DIGITS_HINT),
    "caltech-101": _real("caltech-101", "a photo of a {}"),
    "cifar100-subset": _real("cifar100-subset", "a photo of a {}"),
    "stanford_cars": _real("stanford_cars", "a photo of a {}, a type of car"),
    "dtd": _real("dtd", "a photo of a {} texture"),
    "oxford_flowers": _real("oxford_flowers", "a photo of a {}, a type of flower"),
    "oxford_pets": _real("oxford_pets", "a photo of a {}, a type of pet"),
    "imagenette": _real("imagenette", "a photo of a {}"),
}
EMBEDDED = ("digits", "digits10")


def dataset_names():
    """Registered names plus the `folder:<path>` form, for help texts."""
    return sorted(REGISTRY) + ["folder:<path>"]


def get_dataset(name):
    """Look a dataset up by name; `folder:<path>` wraps any ImageFolder tree with train/ and test/."""
    if name.startswith("folder:"):
        root = Path(name[len("folder:"):]).expanduser().resolve()
        val = "val" if (root / "val").is_dir() else None
        return DatasetSpec(name=name, root=root, val_split=val,
                           prepare_hint=f"create {root}/train/<class>/* and {root}/test/<class>/*")
    if name not in REGISTRY:
        raise DistDiffError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return REGISTRY[name]


def ensure_prepared(spec):
    """Export the embedded digits dataset if it is missing (idempotent, atomic)."""
    if spec.name in EMBEDDED and not (spec.root / spec.test_split).is_dir():
        from distdiff.digits import export_digits  # only the embedded dataset needs sklearn
        export_digits(spec.root)


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


def test_transform(image_size=224, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Resize -> CenterCrop -> normalise: used for evaluation and for feature extraction."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize_size), v2.CenterCrop(image_size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


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

    Re-decoding and re-resizing the same few hundred PNGs every epoch was 60 % of a digits
    training epoch; the uint8 results of the head are kept in memory instead.
    """

    def __init__(self, folder, head, tail):
        self.images = [head(folder.loader(path)) for path, _ in folder.samples]
        self.targets = list(folder.targets)
        self.classes = folder.classes
        self.tail = tail

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.tail(self.images[index]), self.targets[index]


def preload(folder, head, tail, max_bytes=2 << 30):
    """Preloaded(folder, head, tail) if the resized images fit in `max_bytes`, else the folder
    itself with the composed transform (same items, decoded per access)."""
    probe = head(folder.loader(folder.samples[0][0]))
    need = probe.numel() * probe.element_size() * len(folder)
    if need > max_bytes:
        logger.info("%s: %d images need %.1f GiB resized; decoding per access instead of preloading",
                    folder.root, len(folder), need / 2**30)
        folder.transform = v2.Compose([head, tail])
        return folder
    return Preloaded(folder, head, tail)


def class_names(spec):
    """Sorted class folder names of the training split."""
    root = spec.split_dir(spec.train_split)
    if not root.is_dir():
        raise DistDiffError(f"dataset directory {root} not found; run: {spec.prepare_hint}")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def check_same_classes(expected, found, what):
    """Fail with the differing class names when two class lists disagree."""
    if list(expected) != list(found):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise DistDiffError(f"{what}: class folders differ from the dataset "
                            f"(missing {missing[:5]}, unexpected {extra[:5]})")
