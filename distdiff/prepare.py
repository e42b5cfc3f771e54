"""Convert a torchvision dataset into data/<name>/{train,val,test}/<class>/<id>.jpg|png.

Split conventions (INSTALL.md and data/README.md list the sizes):
  caltech-101      30 per class drawn with the seed -> train, the rest -> test; no val (the 30-shot
                   train set is too small to carve: the guide is the last epoch). BACKGROUND_Google
                   and Faces_easy are dropped, as in the authors' code (100 classes)
  cifar100-subset  100 per class drawn from the train split -> train, 50 more per class -> val;
                   the test split -> test
  stanford_cars    train minus 5 per class (-> val) / test
  dtd              partition 1: train / val / test (the official splits)
  oxford_flowers   train / val / test (the official splits)
  oxford_pets      trainval minus 10 per class (-> val) / test
  imagenette       160px: train minus 50 per class (-> val) / val -> test
  fgvc_aircraft    variants: train / val / test (the official splits, as the authors use them)
  pathmnist, bloodmnist, breastmnist
                   the MedMNIST .npz splits: train / val / test (the authors: train / test, test as val)
The authors' splits (their dataloader.py), for comparing with the paper's tables: no val carved,
so the guide is the last epoch (or, with --preset authors, the best test epoch, as theirs):
  stanford_cars_authors  the whole train split / test
  dtd_authors            partition 1: train1 + val1 / test1
  oxford_pets_authors    the whole trainval split / test
  imagenette2-320        320px: the whole train split / val -> test
  oxford_flowers_authors their folders: train/ / valid/ -> test, class names from cat_to_name.json

Carved val splits never touch test, so checkpoints are selected on val for every dataset that has
one. A --source that is already split (ImageFolders train/ and test/, val/ if present; e.g. the
authors' Caltech-101 layout) is kept as it is: nothing is drawn, and there is a val split only
where the source has one, since carving it from train would change their train set. The tree appears whole or not at all (written to a temp dir, then renamed); a complete tree
(one with prepare.json) is left alone.
"""
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from distdiff import DistDiffError
from distdiff.fileio import atomic_write_json
from distdiff.splits import per_class_split

JPEG_QUALITY = 95  # the sources are JPEGs already; 95 keeps re-encoding loss invisible
DTD_NOTE = ("train1 only, so that val1 stays a held-out set for model selection "
            "(written to data/dtd/val); merging it would leave no honest validation split")


@dataclass(frozen=True)
class Rule:
    """How one output split is made from one torchvision split.

    `draw` is an ordered tuple of (chunk name, per-class count) drawn with the seed from that
    torchvision split (see splits.per_class_split); `part` names the chunk this output takes,
    "rest" for what the draw leaves, or "all" (no draw). Rules that read the same torchvision
    split must share `draw`, so that their parts are disjoint.
    """
    kwargs: dict
    part: str = "all"
    draw: tuple = ()
    join: tuple = ()  # kwargs of more torchvision splits appended to this one (the authors' DTD: train1 + val1)


def joined(parts):
    """Torchvision splits one after the other (torch's ConcatDataset) with their common classes and
    all their labels, as the converters read them."""
    from torch.utils.data import ConcatDataset

    classes = class_names_of(parts[0])
    if any(class_names_of(p) != classes for p in parts[1:]):
        raise DistDiffError("the joined splits have different classes")
    dataset = ConcatDataset(parts)
    dataset.classes, dataset.targets = classes, np.concatenate([labels_of(p) for p in parts]).tolist()
    return dataset


@dataclass(frozen=True)
class Source:
    """A torchvision dataset class and the output splits built from it."""
    tv_class: str
    splits: dict            # output split name -> Rule
    ext: str = "jpg"
    common: dict = field(default_factory=dict)  # constructor arguments shared by every split
    layout: str = ""        # what --source must contain, for error messages
    exclude: tuple = ()     # class names never written
    shots_chunk: str = ""   # the drawn chunk whose size --shots sets (few-shot datasets)


def _carve(kwargs_train, kwargs_test, val_per_class, train_part="rest"):
    """train minus `val_per_class` per class (-> val), and the test split."""
    draw = (("val", val_per_class),)
    return {"train": Rule(kwargs_train, train_part, draw), "val": Rule(kwargs_train, "val", draw),
            "test": Rule(kwargs_test)}


CALTECH_DRAW = (("train", 30),)
CIFAR_DRAW = (("train", 100), ("val", 50))
SOURCES = {
    "caltech-101": Source(
        "Caltech101", {"train": Rule({}, "train", CALTECH_DRAW), "test": Rule({}, "rest", CALTECH_DRAW)},
        common={"target_type": "category"}, layout="caltech101/101_ObjectCategories/<class>/image_0001.jpg",
        exclude=("BACKGROUND_Google", "Faces_easy"), shots_chunk="train"),
    "cifar100-subset": Source(
        "CIFAR100", {"train": Rule({"train": True}, "train", CIFAR_DRAW),
                     "val": Rule({"train": True}, "val", CIFAR_DRAW), "test": Rule({"train": False})},
        ext="png", layout="cifar-100-python/", shots_chunk="train"),  # 32x32: lossless PNG costs little
    "stanford_cars": Source(
        "StanfordCars", _carve({"split": "train"}, {"split": "test"}, 5),
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
        "OxfordIIITPet", _carve({"split": "trainval"}, {"split": "test"}, 10),
        common={"target_types": "category"}, layout="oxford-iiit-pet/{images,annotations}/"),
    "imagenette": Source(
        "Imagenette", _carve({"split": "train"}, {"split": "val"}, 50),
        common={"size": "160px"}, layout="imagenette2-160/{train,val}/"),
    "fgvc_aircraft": Source(
        "FGVCAircraft", {"train": Rule({"split": "train"}), "val": Rule({"split": "val"}),
                         "test": Rule({"split": "test"})},
        common={"annotation_level": "variant"}, layout="fgvc-aircraft-2013b/data/{images,variants.txt,...}"),
    # The authors' splits of the same downloads: their whole training split, nothing carved.
    "stanford_cars_authors": Source(
        "StanfordCars", {"train": Rule({"split": "train"}), "test": Rule({"split": "test"})},
        layout="stanford_cars/{devkit,cars_train,cars_test,cars_test_annos_withlabels.mat} "
               "(torchvision cannot download it any more; fetch it by hand)"),
    "dtd_authors": Source(
        "DTD", {"train": Rule({"split": "train"}, join=({"split": "val"},)), "test": Rule({"split": "test"})},
        common={"partition": 1}, layout="dtd/dtd/{images,labels}/"),
    "oxford_pets_authors": Source(
        "OxfordIIITPet", {"train": Rule({"split": "trainval"}), "test": Rule({"split": "test"})},
        common={"target_types": "category"}, layout="oxford-iiit-pet/{images,annotations}/"),
    "imagenette2-320": Source(
        "Imagenette", {"train": Rule({"split": "train"}), "test": Rule({"split": "val"})},
        common={"size": "320px"}, layout="imagenette2-320/{train,val}/"),
}
# Their Flowers: the widely shared flower_data folders (train/<1..102>/, valid/<1..102>/ and
# cat_to_name.json), read as they are; not a torchvision dataset (--source only).
SOURCES["oxford_flowers_authors"] = Source(
    "ImageFolder", {"train": Rule({"folder": "train"}), "test": Rule({"folder": "valid"})},
    layout="train/<1..102>/*.jpg, valid/<1..102>/*.jpg and cat_to_name.json")
AUTHORS_SPLITS = ("stanford_cars_authors", "dtd_authors", "oxford_pets_authors", "imagenette2-320",
                  "oxford_flowers_authors")

# MedMNIST (v2, 28 px): the medmnist package's .npz files, read with numpy (--source DIR holding
# <name>.npz); the official train / val / test splits. The authors' loader reads train/ and test/
# folders exported from them (their export is not released) and uses test as val; under --preset
# authors the guide is selected on test as theirs. Class names are the package's INFO labels,
# with BloodMNIST's parenthetical list of cell types left out of its folder name.
MEDMNIST_CLASSES = {
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                  "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"),
    "breastmnist": ("malignant", "normal, benign"),
}
SOURCES.update({name: Source(
    "MedMNIST", {split: Rule({"split": split}) for split in ("train", "val", "test")}, ext="png",
    common={"file": f"{name}.npz", "classes": classes},
    layout=f"{name}.npz (the medmnist package's file: train/val/test _images and _labels; a MedMNIST+ size "
           f"such as {name}_224.npz renamed to {name}.npz)") for name, classes in MEDMNIST_CLASSES.items()})


class MedMNISTSplit:
    """One split of a MedMNIST .npz as the converters read a torchvision dataset: `classes`,
    `targets`, and (PIL image, label) items (28x28 L or RGB)."""

    def __init__(self, path, split, classes):
        try:
            with np.load(path) as data:
                images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        except (OSError, ValueError, KeyError) as err:
            raise DistDiffError(f"{path}: not a MedMNIST .npz with {split}_images and {split}_labels "
                                f"({' '.join(str(err).split())[:120]})") from None
        if labels.ndim > 1 and labels.shape[1] != 1:
            raise DistDiffError(f"{path}: {split}_labels has {labels.shape[1]} labels per image; only single-label "
                                "MedMNIST sets are supported")
        self.targets = labels.reshape(-1).astype(np.int64).tolist()
        if len(self.targets) != len(images) or images.ndim not in (3, 4):
            raise DistDiffError(f"{path}: {split}_images {images.shape} and {split}_labels {labels.shape} do not match")
        if self.targets and not 0 <= min(self.targets) <= max(self.targets) < len(classes):
            raise DistDiffError(f"{path}: {split}_labels outside 0..{len(classes) - 1}")
        self.images, self.classes = images, list(classes)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        return Image.fromarray(np.ascontiguousarray(self.images[i])), self.targets[i]


def open_medmnist(source, rule, root, download):
    """One split of <root>/<name>.npz (no download: the medmnist package is not a dependency)."""
    path = Path(root) / source.common["file"]
    fetch = f"fetch it from the MedMNIST site (or with the medmnist package) and pass --source DIR holding {source.layout}"
    if download:
        raise DistDiffError(f"--download is not offered for {source.common['file']} (the medmnist package is not a "
                            f"dependency); {fetch}")
    if not path.is_file():
        raise DistDiffError(f"{path} not found; {fetch}")
    return MedMNISTSplit(path, rule.kwargs["split"], source.common["classes"])


def prepare_flower_folders(name, root, source_root, open_fn=None):
    """The authors' Flowers layout (SOURCES["oxford_flowers_authors"]): train/ and valid/ with
    numbered class folders, renamed by cat_to_name.json; valid/ becomes test, as theirs tests on it."""
    table_path = Path(source_root) / "cat_to_name.json"
    if not table_path.is_file():
        raise DistDiffError(f"{table_path} not found; --source must hold {SOURCES[name].layout}")
    table = {str(k): str(v) for k, v in json.loads(table_path.read_text()).items()}
    splits = open_splits(SOURCES[name], source_root, False, open_fn or open_folder)
    for folder, _ in splits.values():  # numbered folders -> the names the tree's folders take
        missing = sorted(set(folder.classes) - set(table))
        if missing:
            raise DistDiffError(f"cat_to_name.json names no class for folder(s) {missing[:5]} of {folder.root}")
        folder.classes = [table[c] for c in folder.classes]
    meta = {"dataset": name, "source": str(source_root), "source_layout": SOURCES[name].layout}
    return build_tree(root, splits, 0, SOURCES[name].ext, (), meta)


def with_options(source, shots=None, keep=()):
    """`source` with the few-shot chunk resized to `shots` and the classes in `keep` written."""
    splits = source.splits
    if shots is not None:
        if not source.shots_chunk:
            raise DistDiffError("--shots applies to the few-shot datasets only "
                                f"({', '.join(n for n, s in SOURCES.items() if s.shots_chunk)})")
        splits = {name: Rule(rule.kwargs, rule.part,
                             tuple((c, shots if c == source.shots_chunk else n) for c, n in rule.draw))
                  for name, rule in splits.items()}
    exclude = tuple(c for c in source.exclude if c not in keep)
    return Source(source.tv_class, splits, source.ext, source.common, source.layout, exclude,
                  source.shots_chunk)


# ---------------------------------------------------------------------------
# Dataset-agnostic conversion
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


def select_indices(labels, rule, seed, keep_labels):
    """Indices of one output split, restricted to the labels being written."""
    labels = np.asarray(labels)
    kept = np.flatnonzero(np.isin(labels, list(keep_labels)))
    if rule.part == "all":
        return kept.tolist()
    chunks = per_class_split(labels[kept], rule.draw, seed)
    return kept[chunks[rule.part]].tolist()


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
        rgb = image.convert("RGB")  # the pipeline reads RGB; JPEG cannot store L/P/RGBA modes
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
                    splits={name: {"images": sum(c.values()), "part": splits[name][1].part,
                                   "draw": [list(d) for d in splits[name][1].draw],
                                   "torchvision_kwargs": splits[name][1].kwargs,
                                   **({"joined_kwargs": list(splits[name][1].join)} if splits[name][1].join else {})}
                            for name, c in counts.items()},
                    excluded_classes=list(exclude))
        atomic_write_json(tmp / "prepare.json", info)
        tmp.chmod(0o755)  # mkdtemp makes it private; the tree is an ordinary shared folder
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

def open_dataset(source, rule, root, download):
    """Instantiate the torchvision dataset for one split; its failures become one-line errors."""
    from torchvision import datasets as tv_datasets

    cls = getattr(tv_datasets, source.tv_class)
    try:
        return cls(str(root), download=download, **source.common, **rule.kwargs)
    except (RuntimeError, ValueError, OSError, ImportError) as err:
        hint = ("the download failed; fetch the files by hand and pass --source DIR" if download
                else "pass --download, or --source DIR")
        raise DistDiffError(f"torchvision {source.tv_class} could not load {root}: "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; "
                            f"{hint} (expected {source.layout})") from None


def open_splits(source, root, download, open_fn=open_dataset):
    """One torchvision dataset per distinct split (Caltech-101 train and test share one)."""
    opened, splits = {}, {}
    for name, rule in source.splits.items():
        key = json.dumps([rule.kwargs, *rule.join], sort_keys=True)
        if key not in opened:
            parts = [open_fn(source, Rule(kwargs, rule.part, rule.draw), root, download)
                     for kwargs in (rule.kwargs, *rule.join)]
            opened[key] = joined(parts) if rule.join else parts[0]
        splits[name] = (opened[key], rule)
    return splits


READY_SPLITS = ("train", "val", "test")


def ready_splits(source_root):
    """The split folders of an already split ImageFolder layout (train/ and test/, val/ if
    present), or None when `source_root` is a torchvision root."""
    root = Path(source_root)
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        return None
    return [split for split in READY_SPLITS if (root / split).is_dir()]


def open_folder(source, rule, root, download):
    """One split folder of a ready-made layout as a torchvision ImageFolder."""
    from torchvision.datasets import ImageFolder

    folder = Path(root) / rule.kwargs["folder"]
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as err:
        raise DistDiffError(f"{folder}: {str(err).splitlines()[0]}") from None


def prepare_ready(name, root, source_root, splits, keep=(), open_fn=open_folder):
    """Copy an already split layout into `root` as it is (the classes the dataset drops left out)."""
    base = with_options(SOURCES[name], None, keep)
    source = Source("ImageFolder", {split: Rule({"folder": split}) for split in splits}, base.ext,
                    layout="train/<class>/*, test/<class>/* (val/ if any)", exclude=base.exclude)
    meta = {"dataset": name, "source": str(source_root),
            "source_layout": f"already split ({', '.join(f'{s}/' for s in splits)}), kept as it is"}
    return build_tree(root, open_splits(source, source_root, False, open_fn), 0, source.ext, source.exclude, meta)


def prepare(name, root, source_root, download=False, seed=0, shots=None, keep=(), open_fn=open_dataset):
    """Convert dataset `name` into `root`; returns prepare.json's dict, or None if already complete."""
    import torchvision

    if is_complete(root):
        return None
    if name == "oxford_flowers_authors":
        if download:
            raise DistDiffError(f"{name} is their flower_data folders, which torchvision does not download; "
                                f"pass --source DIR holding {SOURCES[name].layout}")
        return prepare_flower_folders(name, root, source_root)
    if SOURCES[name].tv_class == "MedMNIST":
        source = with_options(SOURCES[name], shots, keep)
        meta = {"dataset": name, "source": str(Path(source_root) / source.common["file"]), "format": "MedMNIST .npz"}
        return build_tree(root, open_splits(source, source_root, download, open_medmnist), seed, source.ext, (), meta)
    ready = None if download else ready_splits(source_root)
    if ready:
        if shots is not None:
            raise DistDiffError(f"--shots draws a training split, but {source_root} is already split "
                                "(train/, test/); it is kept as it is")
        return prepare_ready(name, root, source_root, ready, keep)
    source = with_options(SOURCES[name], shots, keep)
    splits = open_splits(source, source_root, download, open_fn)
    # The torchvision version is recorded because its split files may change between releases.
    meta = {"dataset": name, "torchvision_class": source.tv_class,
            "torchvision_version": torchvision.__version__, "torchvision_common_kwargs": source.common}
    if name == "dtd":
        meta["note"] = DTD_NOTE
    return build_tree(root, splits, seed, source.ext, source.exclude, meta)
