"""Convert a torchvision dataset into data/<name>/{train,test}/<class>/<id>.jpg|png.

    python scripts/prepare_data.py caltech-101 --download     # fetch with torchvision, then convert
    python scripts/prepare_data.py dtd --source ~/torchvision  # convert an existing torchvision root

Split conventions (see INSTALL.md):
  caltech-101      30 per class drawn with --seed -> train, the rest -> test; no BACKGROUND_Google
  cifar100-subset  100 images per class drawn with --seed from the train split; the full test split
  stanford_cars    train / test
  dtd              partition 1: train / test; val -> val (kept out of train, see DTD_NOTE)
  oxford_flowers   train / test; val -> val
  oxford_pets      trainval / test
  imagenette       160px: train / val -> train / test

The tree appears whole or not at all (written to a temp dir, then renamed); a complete tree
(one with prepare.json) is left alone.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torchvision
from torchvision import datasets as tv_datasets
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distdiff import DistDiffError  # noqa: E402
from distdiff.datasets import DATA_ROOT, REGISTRY, get_dataset  # noqa: E402
from distdiff.fileio import atomic_write_json, run_cli  # noqa: E402

DOWNLOAD_ROOT = DATA_ROOT / "raw"
JPEG_QUALITY = 95  # the sources are JPEGs already; 95 keeps re-encoding loss invisible
DTD_NOTE = ("train1 only, so that val1 stays a held-out set for model selection "
            "(written to data/dtd/val); merging it would leave no honest validation split")


@dataclass(frozen=True)
class Rule:
    """How one output split is made from one torchvision split."""
    kwargs: dict            # torchvision constructor arguments selecting the split
    take: str = "all"       # all | drawn (per_class drawn with the seed) | rest (the others)
    per_class: int = 0


@dataclass(frozen=True)
class Source:
    """A torchvision dataset class and the output splits built from it."""
    tv_class: str
    splits: dict            # output split name -> Rule
    ext: str = "jpg"
    common: dict = field(default_factory=dict)  # constructor arguments shared by every split
    layout: str = ""        # what --source must contain, for error messages
    exclude: tuple = ()     # class names never written


SOURCES = {
    "caltech-101": Source(
        "Caltech101", {"train": Rule({}, "drawn", 30), "test": Rule({}, "rest", 30)},
        common={"target_type": "category"}, layout="caltech101/101_ObjectCategories/",
        exclude=("BACKGROUND_Google",)),
    "cifar100-subset": Source(
        "CIFAR100", {"train": Rule({"train": True}, "drawn", 100), "test": Rule({"train": False})},
        ext="png", layout="cifar-100-python/"),  # 32x32 originals: lossless PNG costs little
    "stanford_cars": Source(
        "StanfordCars", {"train": Rule({"split": "train"}), "test": Rule({"split": "test"})},
        layout="stanford_cars/{devkit,cars_train,cars_test,cars_test_annos_withlabels.mat} "
               "(torchvision cannot download it any more; fetch it by hand)"),
    "dtd": Source(
        "DTD", {"train": Rule({"split": "train"}), "val": Rule({"split": "val"}),
                "test": Rule({"split": "test"})},
        common={"partition": 1}, layout="dtd/dtd/{images,labels}/"),
    "oxford_flowers": Source(
        "Flowers102", {"train": Rule({"split": "train"}), "val": Rule({"split": "val"}),
                       "test": Rule({"split": "test"})},
        layout="flowers-102/{jpg,imagelabels.mat,setid.mat}"),
    "oxford_pets": Source(
        "OxfordIIITPet", {"train": Rule({"split": "trainval"}), "test": Rule({"split": "test"})},
        common={"target_types": "category"}, layout="oxford-iiit-pet/{images,annotations}/"),
    "imagenette": Source(
        "Imagenette", {"train": Rule({"split": "train"}), "test": Rule({"split": "val"})},
        common={"size": "160px"}, layout="imagenette2-160/{train,val}/"),
}


# ---------------------------------------------------------------------------
# Dataset-agnostic conversion (unit-tested without downloads)
# ---------------------------------------------------------------------------

def safe_class_name(name):
    """A readable, filesystem-safe folder name ("Ram C/V Van" -> "Ram_C_V_Van")."""
    if isinstance(name, (tuple, list)):  # Imagenette lists synonyms; the first is the common one
        name = name[0]
    text = str(name).replace("'", "")  # "colt's foot" -> "colts foot", not "colt s foot" in prompts
    # Underscores, not spaces: prompts turn them back into spaces, and shells need no quoting.
    text = re.sub(r"[^\w.+-]+", "_", text.strip()).strip("._")
    if not text:
        raise DistDiffError(f"class name {name!r} has no usable characters for a folder name")
    return text


def folder_names(names):
    """Sanitise every class name; two classes mapping to one folder would merge them, so fail."""
    folders = [safe_class_name(n) for n in names]
    seen = {}
    for name, folder in zip(names, folders):
        other = seen.setdefault(folder.lower(), name)  # lower(): case-insensitive filesystems
        if other != name:
            raise DistDiffError(f"class names {other!r} and {name!r} both map to folder {folder!r}")
    return folders


def class_names_of(dataset):
    """Class names in label order (torchvision uses `classes`, Caltech101 `categories`)."""
    names = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
    if not names:
        raise DistDiffError(f"{type(dataset).__name__} exposes no class names")
    return list(names)


def labels_of(dataset):
    """All labels without decoding images where torchvision keeps them in a list."""
    for attr in ("targets", "y", "_labels"):
        if getattr(dataset, attr, None) is not None:
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    if getattr(dataset, "_samples", None) is not None:
        return np.asarray([label for _, label in dataset._samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)


def per_class_draw(labels, per_class, seed):
    """Seeded draw of `per_class` indices from every class; returns (drawn, rest), both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    drawn, rest = [], []
    for label in np.unique(labels):  # fixed class order keeps the draw reproducible
        idx = rng.permutation(np.flatnonzero(labels == label))
        if len(idx) < per_class:
            raise DistDiffError(f"class {int(label)} has {len(idx)} images, fewer than {per_class}")
        drawn.extend(idx[:per_class].tolist())
        rest.extend(idx[per_class:].tolist())
    return sorted(drawn), sorted(rest)


def select_indices(labels, rule, seed, keep_labels):
    """Indices of one output split, restricted to the labels being written."""
    labels = np.asarray(labels)
    keep = np.isin(labels, list(keep_labels))
    if rule.take == "all":
        return np.flatnonzero(keep).tolist()
    kept = np.flatnonzero(keep)
    drawn, rest = per_class_draw(labels[kept], rule.per_class, seed)
    chosen = drawn if rule.take == "drawn" else rest
    return kept[chosen].tolist()


def iter_samples(dataset, indices, folders):
    """Yield (file stem, PIL image, class folder); the stem is the torchvision index."""
    width = max(5, len(str(len(dataset))))
    for i in indices:
        image, label = dataset[i]
        yield f"{i:0{width}d}", image, folders[label]


def write_images(samples, split_dir, ext, total=None, desc=None):
    """Save (stem, image, class) triples as split_dir/<class>/<stem>.<ext>; returns class counts."""
    counts = {}
    for stem, image, folder in tqdm(samples, total=total, desc=desc, unit="img"):
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
        rgb = image.convert("RGB")  # the pipeline reads RGB; JPEG cannot store P/RGBA modes
        options = {"quality": JPEG_QUALITY} if ext == "jpg" else {}
        rgb.save(split_dir / folder / f"{stem}.{ext}", **options)
        image.close()
        counts[folder] = counts.get(folder, 0) + 1
    return counts


def is_complete(root):
    """prepare.json is written last inside the temp tree, so its presence means complete."""
    return (Path(root) / "prepare.json").is_file()


def build_tree(root, splits, seed=0, ext="jpg", exclude=(), meta=None):
    """Write every split into a temp dir next to `root`, then rename it into place.

    `splits` maps output split -> (dataset, Rule). Returns the prepare.json dict, or None
    when `root` is already complete.
    """
    root = Path(root)
    if is_complete(root):
        return None
    if root.exists():
        raise DistDiffError(f"{root} exists but has no prepare.json (not written by this script); "
                            "move it away and rerun, or use it as folder:<path>")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
    try:
        counts = {name: _write_split(tmp / name, dataset, rule, seed, ext, exclude)
                  for name, (dataset, rule) in splits.items()}
        _check_same_classes(counts)
        info = dict(meta or {}, seed=seed, ext=ext, num_classes=len(next(iter(counts.values()))),
                    splits={name: {"images": sum(c.values()), "take": splits[name][1].take,
                                   "per_class": splits[name][1].per_class,
                                   "torchvision_kwargs": splits[name][1].kwargs}
                            for name, c in counts.items()},
                    excluded_classes=list(exclude))
        atomic_write_json(tmp / "prepare.json", info)
        os.replace(tmp, root)  # the tree appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write_split(split_dir, dataset, rule, seed, ext, exclude):
    """Select and write one split; returns counts per class folder."""
    names = class_names_of(dataset)
    folders = folder_names(names)
    keep = [i for i, n in enumerate(names) if n not in exclude]
    indices = select_indices(labels_of(dataset), rule, seed, keep)
    samples = iter_samples(dataset, indices, folders)
    return write_images(samples, split_dir, ext, total=len(indices), desc=split_dir.name)


def _check_same_classes(counts):
    """Every split must hold every class, or ImageFolder labels would disagree between splits."""
    splits = list(counts)
    first = sorted(counts[splits[0]])
    for name in splits[1:]:
        if sorted(counts[name]) != first:
            differ = sorted(set(first) ^ set(counts[name]))
            raise DistDiffError(f"splits {splits[0]!r} and {name!r} have different classes "
                                f"(e.g. {differ[:5]})")


# ---------------------------------------------------------------------------
# torchvision side
# ---------------------------------------------------------------------------

def source_root(args, source):
    """Where torchvision finds (or, with --download, puts) the raw files."""
    if args.source:
        root = Path(args.source).expanduser()
        if not args.download and not root.is_dir():
            raise DistDiffError(f"--source {root} does not exist; pass --download to fetch "
                                f"{args.name}, or --source DIR containing {source.layout}")
        return root
    if not args.download:
        raise DistDiffError(f"no source for {args.name}: pass --download to fetch it with "
                            "torchvision, or --source DIR (an existing torchvision root "
                            f"containing {source.layout})")
    return DOWNLOAD_ROOT


def open_dataset(source, rule, root, download):
    """Instantiate the torchvision dataset for one split; its failures become one-line errors."""
    cls = getattr(tv_datasets, source.tv_class)
    try:
        return cls(str(root), download=download, **source.common, **rule.kwargs)
    except (RuntimeError, ValueError, OSError, ImportError) as err:
        hint = ("the download failed; fetch the files by hand and pass --source DIR" if download
                else "pass --download, or --source DIR")
        raise DistDiffError(f"torchvision {source.tv_class} could not load {root}: "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                            f"{hint} (expected {source.layout})") from None


def open_splits(source, root, download):
    """One torchvision dataset per distinct split (Caltech-101 train and test share one)."""
    opened, splits = {}, {}
    for name, rule in source.splits.items():
        key = json.dumps(rule.kwargs, sort_keys=True)
        if key not in opened:
            opened[key] = open_dataset(source, rule, root, download)
        splits[name] = (opened[key], rule)
    return splits


def not_convertible(name):
    """Why `name` has nothing to convert here, and what to run instead."""
    if name in REGISTRY or name.startswith("folder:"):
        hint = get_dataset(name).prepare_hint
        return f"{name} is not converted from torchvision (to prepare it: {hint})"
    return f"unknown dataset {name!r}; choose from {', '.join(sorted(SOURCES))}"


def report_existing(root, seed):
    """Say that the tree is kept, and warn when it was drawn with another seed."""
    print(f"{root} is already prepared (prepare.json exists); nothing to do")
    info = json.loads((Path(root) / "prepare.json").read_text())
    drawn = any(split["take"] != "all" for split in info.get("splits", {}).values())
    if drawn and info.get("seed") != seed:
        print(f"note: it was drawn with --seed {info.get('seed')}, not {seed}; "
              f"delete {root} to draw again")


def main(args):
    if args.name not in SOURCES:
        raise DistDiffError(not_convertible(args.name))
    spec = get_dataset(args.name)
    if is_complete(spec.root):
        report_existing(spec.root, args.seed)
        return 0
    source = SOURCES[args.name]
    root = source_root(args, source)
    splits = open_splits(source, root, args.download)
    # The torchvision version is recorded because its split files may change between releases.
    meta = {"dataset": args.name, "torchvision_class": source.tv_class,
            "torchvision_version": torchvision.__version__,
            "torchvision_common_kwargs": source.common}
    if args.name == "dtd":
        meta["note"] = DTD_NOTE
    info = build_tree(spec.root, splits, args.seed, source.ext, source.exclude, meta)
    for name, split in info["splits"].items():
        print(f"{name:6s} {split['images']:6d} images")
    print(f"wrote {spec.root} ({info['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    # No argparse `choices`: main() answers `digits` or a typo with a hint, in one line.
    parser.add_argument("name", help=f"dataset to prepare: {', '.join(sorted(SOURCES))}")
    parser.add_argument("--download", action="store_true",
                        help=f"let torchvision download the raw files (into --source, "
                             f"default {DOWNLOAD_ROOT})")
    parser.add_argument("--source", default=None,
                        help="an existing torchvision root holding the raw files")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the per-class draws (caltech-101, cifar100-subset)")
    sys.exit(run_cli(main, parser.parse_args()))
