"""Run directories and logging."""
import logging
import sys
from pathlib import Path

from distdiff.config import CONFIG_DIR, dataset_yaml

logger = logging.getLogger("distdiff")


def dataset_dirname(dataset):
    """A filesystem-safe name for a dataset (folder:<path> -> folder_<basename>)."""
    if dataset.startswith("folder:"):
        return "folder_" + Path(dataset[len("folder:"):]).resolve().name
    return dataset


def train_run_dir(output, dataset, arch, pretrained, lr, seed, exp=None, aug="default", resize_mode="shorter"):
    """checkpoint/<dataset>/<arch>_<pretrained|unpretrained>[_<exp>]_lr<lr>[_aug-<aug>][_resize-squash]/seed<N>.

    The augmentation and resize mode appear only when they are not the defaults, so run dirs made
    before those flags existed keep their names and stay valid.
    """
    tag = "pretrained" if pretrained else "unpretrained"
    name = f"{arch}_{tag}" + (f"_{exp}" if exp else "") + f"_lr{lr:g}"
    if aug and aug != "default":
        name += f"_aug-{aug}"
    if resize_mode != "shorter":
        name += f"_resize-{resize_mode}"
    return Path(output) / dataset_dirname(dataset) / name / f"seed{seed}"


def default_guide_arch(dataset, config_dir=CONFIG_DIR):
    """configs/<dataset>.yaml's expand.guide_arch (the arch its train section trains), else resnet50."""
    return (dataset_yaml(dataset, config_dir).get("expand") or {}).get("guide_arch", "resnet50")


def default_guide_ckpt(root, dataset, arch=None, config_dir=CONFIG_DIR):
    """expand_distdiff.py's default guide: seed 1 of `arch` (default: default_guide_arch),
    unpretrained, lr 0.1, default augmentation."""
    arch = arch or default_guide_arch(dataset, config_dir)
    return train_run_dir(root, dataset, arch, False, 0.1, 1) / "model_best.pth.tar"


def expansion_dir(root, dataset, exp):
    """Where expand_distdiff.py writes an expansion and train_expand.py reads it."""
    return Path(root) / dataset_dirname(dataset) / "expansions" / exp


def setup_logging(run_dir=None, filename="log.txt"):
    """Log to stdout and, given a run dir, to <run_dir>/<filename>."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / filename))
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logger
