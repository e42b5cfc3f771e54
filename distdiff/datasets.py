"""Image loading: the paper's transforms and ImageFolder splits with clear errors (the registry of
names, roots and prompts is distdiff/registry.py)."""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2
from tqdm.auto import tqdm

from distdiff import DistDiffError, augment, folders
from distdiff.config import auto_or_count
from distdiff.folders import rgb_loader
from distdiff.registry import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Transforms (paper: Resize 256 -> RandomRotation 15 -> RandomCrop 224 -> RandomHorizontalFlip)
# ---------------------------------------------------------------------------

INTERPOLATIONS = ("bilinear", "bicubic")


def _resize(size, interpolation):
    """v2.Resize with a named interpolation (the authors' guide training resizes bicubic)."""
    return v2.Resize(size, interpolation=v2.InterpolationMode(interpolation))


def train_transform(image_size, resize_size, rotation, hflip, *, aug, interpolation, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, split=False):
    """The paper's training augmentation, ending in a normalised float tensor.

    With split=True it returns (head, tail): the deterministic decode-and-resize head, which
    `preload` runs once per image, and the random tail that runs every epoch. Composing the
    two gives exactly the unsplit transform, because the image is a tensor from the first step.
    `aug` adds a per-image augmentation (distdiff/augment.py) to the random tail.
    """
    head = [v2.ToImage(), _resize(resize_size, interpolation)]
    tail = [v2.RandomRotation(rotation), v2.RandomCrop(image_size)]
    if hflip:
        tail.append(v2.RandomHorizontalFlip())
    tail += augment.uint8_transforms(aug)  # AutoAugment/RandAugment work on uint8 images
    tail += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    tail += augment.normalized_transforms(aug, image_size)  # erased pixels become the mean (0)
    return (v2.Compose(head), v2.Compose(tail)) if split else v2.Compose(head + tail)


def test_transform(image_size, resize_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, split=False,
                   interpolation="bilinear"):
    """Resize -> CenterCrop -> normalise: used for evaluation and for feature extraction.

    With split=True it returns (head, tail): the deterministic uint8 decode-resize-crop head
    (cached once by `preload`) and the float conversion.
    """
    head = [v2.ToImage(), _resize(resize_size, interpolation), v2.CenterCrop(image_size)]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return (v2.Compose(head), v2.Compose(tail)) if split else v2.Compose(head + tail)


# ---------------------------------------------------------------------------
# Loading ImageFolder splits with clear errors
# ---------------------------------------------------------------------------

def check_images(folder, threads=1):
    """Open every image once so that a corrupt file fails before training, not mid-epoch."""
    decode_all(folder, lambda image: None, threads)


def decode_all(folder, fn, threads=1, desc=None):
    """[fn(decoded image) for every image of `folder`], in order, each image decoded once, on
    `threads` threads (PIL decodes and torch resizes release the GIL); a bar for long folders."""
    samples = folder.samples
    bar = tqdm(total=len(samples), desc=desc or f"decode {Path(folder.root).name}", leave=False,
               disable=len(samples) < 2000, dynamic_ncols=True)

    def one(path):
        out = fn(folder.loader(path))
        bar.update()
        return out
    try:
        if threads <= 1:
            return [one(path) for path, _ in samples]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
            return list(pool.map(one, [path for path, _ in samples]))
    finally:
        bar.close()


class _ImageFolder(tv_datasets.ImageFolder):
    """torchvision's ImageFolder over a distdiff.folders.Listing, so the expander's torch-free plan
    and every stage see one listing (one rule, one-line errors)."""

    def __init__(self, listing, transform=None):
        self.listing = listing  # read by the two methods below, which the constructor calls
        super().__init__(listing.root, transform=transform, loader=rgb_loader)

    def find_classes(self, directory):
        return self.listing.classes, {name: i for i, name in enumerate(self.listing.classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return list(self.listing.samples)


def image_folder(root, transform=None, hint="", verify=True):
    """An ImageFolder of the tree at `root` whose images load as upright RGB; `hint` is the command
    that makes a missing tree."""
    classes = folders.class_folders(root, hint)
    return as_image_folder(folders.Listing(root, classes, folders.class_samples(root, classes)), transform, verify)


def load_split(spec, split, transform=None, verify=True):
    """One split of a registered dataset as an ImageFolder (distdiff.folders.list_split: where the
    val split is held out of train/, the train split leaves those images out and val is them)."""
    return None if split is None else as_image_folder(folders.list_split(spec, split), transform, verify)


def as_image_folder(listing, transform=None, verify=True):
    """An ImageFolder over a distdiff.folders.Listing (its samples, in its order)."""
    folder = _ImageFolder(listing, transform)
    if verify:
        check_images(folder)
    return folder


def set_samples(folder, samples):
    """Give an ImageFolder other (path, label) samples: its three views of them stay in step."""
    folder.samples = folder.imgs = list(samples)
    folder.targets = [label for _, label in folder.samples]
    return folder


class Preloaded(torch.utils.data.Dataset):
    """An image folder whose deterministic head transform ran once: items are tail(head(image)).

    The head's uint8 outputs are kept in memory (a 224 px crop is 150 KB; the float32 tensor
    would be 4x that). Re-decoding and re-resizing the same few hundred PNGs every epoch was
    60 % of a digits training epoch.
    """

    def __init__(self, folder, head, tail, threads=1):
        self.images = decode_all(folder, head, threads, desc=f"cache {Path(folder.root).name}")
        self.targets = list(folder.targets)
        self.classes = folder.classes
        self.tail = tail

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.tail(self.images[index]), self.targets[index]


# ---------------------------------------------------------------------------
# The decoded-image cache and its budget (--cache_mb)
# ---------------------------------------------------------------------------

# --cache_mb auto: at most this fraction of the memory available when the run starts, divided
# among the training processes that a launcher runs side by side. The rest stays for the model,
# the DataLoader workers and the other processes.
AUTO_CACHE_FRACTION = 0.25
FALLBACK_CACHE_MB = 512  # auto where the available memory cannot be read


def parse_cache_mb(value):
    """--cache_mb as "auto" or a whole number of MB >= 0; anything else is a one-line error."""
    return auto_or_count(value, "--cache_mb", "a number of MB >= 0 (0 = no cache)")


def _cgroup_memory_left():
    """Bytes left under this process's cgroup memory limit (containers, SLURM jobs), counting the
    inactive page cache as free since the kernel reclaims it; None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            roots, names = ["/sys/fs/cgroup"], ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            roots, names = ["/sys/fs/cgroup/memory"], ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                       "total_inactive_file")
        else:
            continue
        for folder in (Path(roots[0] + path), Path(roots[0])):  # own cgroup, or a namespaced root
            try:
                limit = (folder / names[0]).read_text().strip()
                used = int((folder / names[1]).read_text())
                stat = dict(row.split() for row in (folder / "memory.stat").read_text().splitlines())
            except (OSError, ValueError):
                continue
            if not limit.isdigit():  # "max": no limit
                return None
            return int(limit) - used + int(stat.get(names[2], 0))
    return None


def available_memory():
    """Bytes this process can still fill: MemAvailable from /proc/meminfo (os.sysconf's free pages
    where there is none), lowered to what its cgroup's limit leaves; None when unknown."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            pass
    cgroup = _cgroup_memory_left()
    if cgroup is not None:
        available = cgroup if available is None else min(available, cgroup)
    return available


def cache_budget_mb(cache_mb, need_bytes, available_bytes, processes=1):
    """(MB, reason): the cache budget for --cache_mb and the sentence that explains it.

    An explicit number is used as given. "auto" is what the splits need, capped at
    AUTO_CACHE_FRACTION of `available_bytes` divided among `processes`; FALLBACK_CACHE_MB when
    the available memory is unknown.
    """
    cache_mb = parse_cache_mb(cache_mb)
    need_mb = -(-need_bytes >> 20)  # rounded up
    need = f"the splits need ~{need_mb} MB decoded"
    if cache_mb != "auto":
        return cache_mb, f"{need}; --cache_mb {cache_mb}"
    if available_bytes is None:
        return FALLBACK_CACHE_MB, f"{need}; --cache_mb auto: {FALLBACK_CACHE_MB} MB (available memory unknown)"
    cap_mb = int(available_bytes * AUTO_CACHE_FRACTION / max(1, processes)) >> 20
    share = f"{AUTO_CACHE_FRACTION:.0%} of {available_bytes >> 20} MB available" + (
        f" / {processes} training processes" if processes > 1 else "")
    if need_mb <= cap_mb:
        return need_mb, f"{need}; --cache_mb auto: all of it (at most {share} = {cap_mb} MB)"
    return cap_mb, f"{need}; --cache_mb auto: {cap_mb} MB = {share}"


def estimate_cache_bytes(folder, head, probes=5):
    """Bytes that the uint8 outputs of `head` take for every image of `folder`, estimated from up
    to `probes` images spread over the folder (exact for centre-cropped evaluation splits,
    approximate for resized training images of varying aspect ratio). Only the files' headers are
    read: `head` runs on blank pixels of each probe's size, so no image is decoded for this."""
    step = max(1, len(folder) // probes)
    sizes = []
    for path, _ in folder.samples[::step][:probes]:
        try:
            with Image.open(path) as img:
                width, height = img.size
                # rgb_loader turns these; EXIF read from the header only (a PNG's getexif() would decode)
                if "exif" in img.info and img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                    width, height = height, width
        except (UnidentifiedImageError, OSError) as err:
            raise DistDiffError(f"cannot read image {path}: {err}; delete or replace it") from None
        sizes.append(_nbytes(head(torch.zeros(3, height, width, dtype=torch.uint8))))
    return int(sum(sizes) / len(sizes) * len(folder))


def _nbytes(tensor):
    return tensor.numel() * tensor.element_size()


class CacheBudget:
    """Bytes left for in-memory image caches; splits that do not fit are decoded per access.
    Either way every image is decoded once here, before training, so a corrupt file fails first."""

    def __init__(self, megabytes, threads=1):
        self.left, self.threads = int(megabytes) << 20, threads

    def preload(self, folder, head, tail, need=None):
        """Preloaded(folder, head, tail) if its uint8 images (`need` bytes; estimated when None)
        fit the remaining budget, else the folder itself with the composed transform (the same
        items, decoded on every access, after one checking pass)."""
        need = estimate_cache_bytes(folder, head) if need is None else need
        if need > self.left:
            logger.info("%s: %d images need ~%d MB in memory (%d MB of the cache budget left); decoding "
                        "them every epoch instead", folder.root, len(folder), need >> 20, self.left >> 20)
            check_images(folder, self.threads)
            folder.transform = v2.Compose([head, tail])
            return folder
        self.left -= need
        return Preloaded(folder, head, tail, self.threads)


def align_classes(folder, classes, what):
    """An expanded ImageFolder relabelled by class name to the dataset's labels: an expansion of
    some sources only (--limit) has folders for their classes only, and its own sorted order
    would shift the labels. A class the dataset lacks is an error; missing ones are returned."""
    extra = sorted(set(folder.classes) - set(classes))
    if extra:
        raise DistDiffError(f"{what}: class folders {extra[:5]} are not classes of the dataset")
    index = {name: i for i, name in enumerate(classes)}
    set_samples(folder, [(path, index[folder.classes[label]]) for path, label in folder.samples])
    missing = sorted(set(classes) - set(folder.classes))
    folder.classes, folder.class_to_idx = list(classes), index
    return missing


def check_same_classes(expected, found, what):
    """Fail with the differing class names when two class lists disagree."""
    if list(expected) != list(found):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise DistDiffError(f"{what}: class folders differ from the dataset "
                            f"(missing {missing[:5]}, unexpected {extra[:5]})")
