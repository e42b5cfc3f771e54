"""Dataset registry: names, on-disk roots, class names and prompt templates. No torch import, so
light tools (parse_logs.py, plot_results.py) stay fast; distdiff/datasets.py loads the images.

Every dataset is an ImageFolder tree `<DATA_ROOT>/<name>/<split>/<class>/*`. Class order is the
sorted folder order (torchvision's rule), so labels are stable across machines. The paper's
datasets are listed here. Other packages add theirs through the `distdiff.datasets` entry-point
group (pyproject.toml): on the first lookup the registry calls each provider found there once.
This repository's embedded benchmark (digits and its shifted domains) is such a provider, so
the library never imports the stand-ins and no script imports anything for its side effects.
"""
import argparse
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from distdiff import DistDiffError
from distdiff.config import REPO_ROOT

# Where dataset trees live; DISTDIFF_DATA_ROOT moves them (e.g. to a larger disk, or a scratch
# folder for scripts/gpu_check.sh).
DATA_ROOT = Path(os.environ.get("DISTDIFF_DATA_ROOT", REPO_ROOT / "data"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROMPT_SETS = ("project", "authors")


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
    # The authors' template (their dataloader.py CUSTOM_TEMPLATES, with the full stop); None where
    # they have none (flowers and pets crash there; digits is ours): the project's is used.
    authors_template: str | None = None
    # Writes the tree where it is missing (idempotent, atomic): the embedded datasets export
    # themselves on first use; the paper's need scripts/prepare_data.py (prepare_hint).
    prepare: Callable[["DatasetSpec"], None] | None = None
    prompt_overrides: dict = field(default_factory=dict)  # folder name -> a whole prompt
    # Without a val/ tree: images per class held out of train/ as the val split (0: none), and the
    # seed of that draw. Every stage reads the same split, so the expander never expands a val image.
    val_from_train: int = 0
    val_seed: int = 0
    # The authors' class words where they differ from ours (their Stanford Cars loader puts the
    # model year first); used with --prompts authors.
    authors_words: Callable[[str], str] | None = None

    def split_dir(self, split):
        """Directory of one split (train/val/test/...)."""
        return self.root / split

    def prompt_name(self, class_folder):
        """The class name as it appears in a prompt ("Faces_easy" -> "Faces easy")."""
        return self.prompt_words.get(class_folder, class_folder.replace("_", " "))

    def prompt(self, class_folder, prompts="project"):
        """The full text prompt for one class, from the project's or the authors' template."""
        if prompts not in PROMPT_SETS:
            raise DistDiffError(f"unknown prompt set {prompts!r}; choose from {PROMPT_SETS}")
        if class_folder in self.prompt_overrides:
            return self.prompt_overrides[class_folder]
        template = self.authors_template if prompts == "authors" and self.authors_template else self.template
        words = self.prompt_name(class_folder)
        return template.format(self.authors_words(words) if prompts == "authors" and self.authors_words else words)

    def val_description(self):
        """How the val split is made, for logs and args.yaml."""
        if self.val_split is None:
            return "none"
        if self.val_from_train:
            return f"{self.val_from_train} per class held out of {self.train_split}/ (seed {self.val_seed})"
        return f"{self.val_split}/"

    def class_prompts(self, classes, prompts="project"):
        """The prompt of every class folder, in label order (the one place prompts are made)."""
        return [self.prompt(name, prompts) for name in classes]


def _real(name, template, authors_template=None, val=True, hint="python scripts/prepare_data.py {name}",
          authors_words=None):
    """A dataset prepared by scripts/prepare_data.py; every one but caltech-101 has a val split."""
    return DatasetSpec(name=name, root=DATA_ROOT / name, template=template, val_split="val" if val else None,
                       prepare_hint=hint.format(name=name), authors_template=authors_template,
                       authors_words=authors_words)


def year_first(words):
    """'AM General Hummer SUV 2000' -> '2000 AM General Hummer SUV' (the authors' car names)."""
    head, _, last = words.rpartition(" ")
    return f"{last} {head}" if head and len(last) == 4 and last.isdigit() else words


REGISTRY = {
    "caltech-101": _real("caltech-101", "a photo of a {}", "a photo of a {}.", val=False),  # 30 shots: nothing to carve
    "cifar100-subset": _real("cifar100-subset", "a photo of a {}", "a photo of a {}."),
    "stanford_cars": _real("stanford_cars", "a photo of a {}, a type of car", "a photo of a {}.",
                           authors_words=year_first),
    "dtd": _real("dtd", "a photo of a {} texture", "{} texture."),
    "oxford_flowers": _real("oxford_flowers", "a photo of a {}, a type of flower"),
    "oxford_pets": _real("oxford_pets", "a photo of a {}, a type of pet"),
    "imagenette": _real("imagenette", "a photo of a {}", "a photo of a {}."),
    "fgvc_aircraft": _real("fgvc_aircraft", "a photo of a {}, a type of aircraft"),  # the authors: no template
    # MedMNIST: the authors' prompt templates (dataloader.py), without their full stop by default.
    "pathmnist": _real("pathmnist", "a colon pathological image of {}", "a colon pathological image of {}."),
    "bloodmnist": _real("bloodmnist", "a photo of {}, a type of cell", "a photo of {}, a type of cell."),
    "breastmnist": _real("breastmnist", "a photo of {} ultrasound image", "a photo of {} ultrasound image."),
    # The authors' splits of the same data (distdiff/prepare.py): their whole training split.
    "stanford_cars_authors": _real("stanford_cars_authors", "a photo of a {}, a type of car", "a photo of a {}.",
                                   val=False, authors_words=year_first),
    "dtd_authors": _real("dtd_authors", "a photo of a {} texture", "{} texture.", val=False),
    "oxford_pets_authors": _real("oxford_pets_authors", "a photo of a {}, a type of pet", val=False),
    "oxford_flowers_authors": _real("oxford_flowers_authors", "a photo of a {}, a type of flower", val=False),
    "imagenette2-320": _real("imagenette2-320", "a photo of a {}", "a photo of a {}.", val=False),
}


PROVIDER_GROUP = "distdiff.datasets"
_providers_loaded = []  # the entry points called, once per process


def register(spec):
    """Add a dataset (providers call this); a name is registered once."""
    if spec.name in REGISTRY and REGISTRY[spec.name] != spec:
        raise DistDiffError(f"dataset {spec.name!r} is registered twice with different settings")
    REGISTRY[spec.name] = spec
    return spec


def registered():
    """Every registered dataset by name: the paper's, then each provider's (loaded on first call)."""
    if not _providers_loaded:
        for entry in sorted(importlib.metadata.entry_points(group=PROVIDER_GROUP), key=lambda e: e.name):
            entry.load()()
            _providers_loaded.append(entry.name)
        _providers_loaded.append(None)  # loaded, even where no provider is installed
    return REGISTRY


def dataset_names():
    """Registered names plus the `folder:<path>` form, for help texts."""
    return sorted(registered()) + ["folder:<path>"]


def _not_installed_hint():
    """Why the embedded datasets may be missing: this checkout is importable but not installed."""
    try:
        importlib.metadata.distribution("distdiff")
        return ""
    except importlib.metadata.PackageNotFoundError:
        return (" (this checkout is not installed, so its embedded datasets are not registered: "
                "bash scripts/setup.sh, or pip install --no-deps -e .)")


def get_dataset(name, data_root=None):
    """Look a dataset up by name; `folder:<path>` wraps any ImageFolder tree with train/ and test/.
    `data_root` moves a registered dataset's tree to <data_root>/<name>."""
    if name.startswith("folder:"):
        return folder_dataset(name, Path(name[len("folder:"):]).expanduser().resolve())
    if name not in registered():
        raise DistDiffError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}{_not_installed_hint()}")
    spec = REGISTRY[name]
    return replace(spec, root=Path(data_root) / spec.root.name) if data_root else spec


FOLDER_FILE = "dataset.yaml"
FOLDER_KEYS = {"template": "the prompt with {} for the class's words",
               "classes": "class folder -> the words for it in the prompt (every class, or none)",
               "prompts": "class folder -> a whole prompt of its own",
               "val_per_class": "without val/: images per class held out of train/ for val (0: none)",
               "val_seed": "the seed of that draw"}
DEFAULT_VAL_PER_CLASS = 2  # a folder tree without val/ holds out this many training images per class


def folder_dataset(name, root):
    """A `folder:<path>` ImageFolder tree, with the settings of its optional dataset.yaml
    (FOLDER_KEYS): prompt words or whole prompts per class folder, and how val is made when
    there is no val/ tree. Checked against the train/ class folders with one-line errors."""
    import yaml

    from distdiff.domains import INDEX

    path = root / FOLDER_FILE
    hint = f"create {root}/train/<class>/* and {root}/test/<class>/*"
    try:
        table = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except yaml.YAMLError as err:
        raise DistDiffError(f"{path}: not valid YAML ({' '.join(str(err).split())[:120]})") from None
    unknown = sorted(map(str, set(table) - set(FOLDER_KEYS))) if isinstance(table, dict) else [repr(table)]
    if unknown:
        raise DistDiffError(f"{path}: unknown key(s) {unknown}; the keys are {', '.join(FOLDER_KEYS)}")
    template = str(table.get("template", "a photo of a {}"))
    if template.count("{}") != 1:
        raise DistDiffError(f"{path}: template {template!r} must hold {{}} once, where the class's words go")
    words, whole = dict(table.get("classes") or {}), dict(table.get("prompts") or {})
    found = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else None
    if found is not None:
        for key, mapping, every in (("classes", words, True), ("prompts", whole, False)):
            extra = sorted(set(map(str, mapping)) - set(found))
            missing = sorted(set(found) - set(map(str, mapping))) if every and mapping else []
            if extra or missing:
                raise DistDiffError(f"{path}: {key}: " + "; ".join(
                    part for part in (f"no class folder {extra[:5]} in train/" if extra else "",
                                      f"class folder(s) {missing[:5]} not listed" if missing else "") if part))
    has_val = (root / "val").is_dir()
    try:
        per_class = INDEX(table.get("val_per_class", 0 if has_val else DEFAULT_VAL_PER_CLASS))
        seed = INDEX(table.get("val_seed", 0))
    except argparse.ArgumentTypeError as err:  # the domain's own words
        raise DistDiffError(f"{path}: {err}") from None
    if has_val and per_class:
        raise DistDiffError(f"{path}: val_per_class {per_class} with a val/ tree: the tree is the val split; "
                            "remove one of them")
    return DatasetSpec(name=name, root=root, template=template, prompt_words={str(k): str(v) for k, v in words.items()},
                       prompt_overrides={str(k): str(v) for k, v in whole.items()},
                       val_split="val" if has_val or per_class else None, val_from_train=per_class, val_seed=seed,
                       prepare_hint=hint)


def ensure_prepared(spec):
    """Write a dataset that prepares itself (the embedded ones) if it is missing."""
    if spec.prepare is not None:
        spec.prepare(spec)


def class_names(spec):
    """Sorted class folder names of the training split."""
    from distdiff.folders import class_folders  # numpy and PIL: not for every `python -m distdiff.runs`

    return class_folders(spec.split_dir(spec.train_split), spec.prepare_hint)
