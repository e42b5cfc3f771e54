"""Run directories, resolved configs, seeding and devices."""
import logging
import random
from pathlib import Path

import numpy as np
import torch

from distdiff import DistDiffError
from distdiff.fileio import atomic_path, load_yaml_config

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
logger = logging.getLogger("distdiff")


# ---------------------------------------------------------------------------
# Configs: paper defaults (argparse) < configs/<dataset>.yaml < command line
# ---------------------------------------------------------------------------

def dataset_config(dataset, section, known_keys, config_dir=CONFIG_DIR):
    """Return the `section` of configs/<dataset>.yaml, rejecting keys the script does not know.

    `folder:<path>` datasets and datasets without a YAML file get an empty dict.
    """
    path = Path(config_dir) / f"{dataset}.yaml"
    if dataset.startswith("folder:") or not path.is_file():
        return {}
    cfg = load_yaml_config(path).get(section) or {}
    unknown = sorted(set(cfg) - set(known_keys))
    if unknown:
        raise DistDiffError(f"{path}: unknown key(s) {unknown} in section '{section}'")
    return cfg


def resolve_args(parser, argv, section):
    """Parse argv twice: once to learn the dataset, then with its YAML section as defaults.

    Positional twins of named flags (`script.py digits resnet18` vs `--dataset digits --arch
    resnet18`) share one dest, declared with default=SUPPRESS so an absent positional never
    overwrites the named value.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "dataset", None):
        parser.error("a dataset is required (positional or --dataset)")
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**dataset_config(args.dataset, section, known))
    return parser.parse_args(argv)


def str2bool(value):
    """Parse the authors' 'True'/'False' positional strings (and 1/0, yes/no)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise ValueError(f"expected True or False, got {value!r}")


# ---------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------

def train_run_dir(output, dataset, arch, pretrained, lr, seed, exp=None, aug="default"):
    """checkpoint/<dataset>/<arch>_<pretrained|unpretrained>[_<exp>]_lr<lr>[_aug-<aug>]/seed<N>.

    The augmentation appears only when it is not the paper's default, so run dirs made before
    --aug existed keep their names and stay valid.
    """
    tag = "pretrained" if pretrained else "unpretrained"
    name = f"{arch}_{tag}" + (f"_{exp}" if exp else "") + f"_lr{lr:g}"
    if aug and aug != "default":
        name += f"_aug-{aug}"
    return Path(output) / dataset_dirname(dataset) / name / f"seed{seed}"


def default_guide_ckpt(root, dataset, arch=None, config_dir=CONFIG_DIR):
    """expand_distdiff.py's default guide: seed 1 of `arch` (default: configs/<dataset>.yaml's
    expand.guide_arch, resnet50 without one), unpretrained, lr 0.1, default augmentation."""
    if arch is None:
        path = Path(config_dir) / f"{dataset}.yaml"
        known = not dataset.startswith("folder:") and path.is_file()
        expand = (load_yaml_config(path).get("expand") or {}) if known else {}
        arch = expand.get("guide_arch", "resnet50")
    return train_run_dir(root, dataset, arch, False, 0.1, 1) / "model_best.pth.tar"


def dataset_dirname(dataset):
    """A filesystem-safe name for a dataset (folder:<path> -> folder_<basename>)."""
    if dataset.startswith("folder:"):
        return "folder_" + Path(dataset[len("folder:"):]).resolve().name
    return dataset


# ---------------------------------------------------------------------------
# Determinism and devices
# ---------------------------------------------------------------------------

def seed_everything(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_cpu(threads=None):
    """CPU hygiene: flush denormals (a late-training run once went 5 s -> 39 s without it)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def resolve_device(device="auto", gpu=None):
    """Turn --device/--gpu into a torch.device; an explicit 'cuda' without a GPU is an error.

    `gpu` is the authors' positional GPU index. It selects the CUDA device when one exists;
    on a machine without CUDA the run goes to the CPU with a logged warning, because the
    seed README passes an index even when the user has no preference.
    """
    cuda = torch.cuda.is_available()
    if device.startswith("cuda"):
        if not cuda:
            raise DistDiffError(f"--device {device} was asked for but no CUDA GPU is visible; "
                                "use --device cpu")
        return torch.device(device if ":" in device or gpu is None else f"cuda:{gpu}")
    if device == "cpu":
        return torch.device("cpu")
    if device != "auto":
        raise DistDiffError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:<i>")
    if cuda:
        return torch.device(f"cuda:{gpu or 0}")
    if gpu not in (None, "", "cpu"):
        logger.warning("GPU %s requested but CUDA is not available: running on the CPU", gpu)
    return torch.device("cpu")


def autocast_dtype(precision):
    """Map --precision to the autocast dtype (None means full fp32)."""
    choices = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in choices:
        raise DistDiffError(f"unknown precision {precision!r}; choose from {sorted(choices)}")
    return choices[precision]


def pipeline_dtype(precision, device):
    """Diffusion pipeline dtype; half precision only on CUDA (CPU kernels are fp32-first)."""
    dtype = autocast_dtype(precision) or torch.float32
    if dtype != torch.float32 and device.type != "cuda":
        raise DistDiffError(f"--precision {precision} needs --device cuda; use fp32 on the CPU")
    return dtype


def atomic_torch_save(obj, path):
    """torch.save to `path` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
