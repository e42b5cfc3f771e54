"""Seeding, CPU settings, devices and precisions."""
import logging
import os
import random

import numpy as np
import torch

from distdiff import DistDiffError
from distdiff.config import PRECISIONS

logger = logging.getLogger(__name__)


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
    if gpu is None and cuda and "LOCAL_RANK" in os.environ:
        # torchrun: process i of a node takes GPU i (round robin when there are more processes).
        gpu = int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count()
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
    if precision not in PRECISIONS:
        raise DistDiffError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def pipeline_dtype(precision, device):
    """Diffusion pipeline dtype; half precision only on CUDA (CPU kernels are fp32-first)."""
    dtype = autocast_dtype(precision) or torch.float32
    if dtype != torch.float32 and device.type != "cuda":
        raise DistDiffError(f"--precision {precision} needs --device cuda; use fp32 on the CPU")
    return dtype
