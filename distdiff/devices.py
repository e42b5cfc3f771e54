"""Seeding, CPU settings, devices and precisions.

The device rule is strict so that a first GPU run cannot quietly run on the CPU: a GPU index
(`--gpu`, the GPUS of the shell chains, torchrun's LOCAL_RANK) or `--device cuda` on a machine
where torch cannot use CUDA is a one-line error naming torch's CUDA build and the driver;
`--device auto` falls back to the CPU only where no NVIDIA GPU exists at all, and says so.
"""
import logging
import os
import shutil
import subprocess

import torch

from distdiff import DistDiffError
from distdiff.config import PRECISIONS

logger = logging.getLogger(__name__)


def configure_cpu(threads=None):
    """CPU hygiene: flush denormals (a late-training run once went 5 s -> 39 s without it)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def nvidia_smi(*args):
    """nvidia-smi's output for `args`; None where there is no driver (or it fails)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def listed_gpus():
    """Names of the GPUs the NVIDIA driver lists (`nvidia-smi -L`); [] where there is no driver."""
    return [line.strip() for line in (nvidia_smi("-L") or "").splitlines() if line.startswith("GPU ")]


def driver_version():
    """The NVIDIA driver's version, or a phrase saying why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver (nvidia-smi not found)"
    out = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    if out is None:
        return "nvidia-smi failed"
    return f"driver {out.split()[0]}" if out.split() else "nvidia-smi reports no driver version"


def cuda_report():
    """One phrase: torch's version and CUDA build, and the driver."""
    build = torch.version.cuda or "none (a CPU-only build of torch)"
    return f"torch {torch.__version__}, CUDA build {build}, {driver_version()}"


def _no_cuda_error(asked):
    return DistDiffError(f"{asked} asks for a GPU but torch cannot use CUDA here ({cuda_report()}); install the "
                         "torch build that matches the driver (INSTALL.md), or pass --device cpu")


def resolve_device(device="auto", gpu=None, env=None):
    """Turn --device/--gpu (and torchrun's LOCAL_RANK) into a torch.device, and make it current.

    The index comes from `cuda:<i>`, else `gpu` (the authors' positional), else LOCAL_RANK (one
    process per GPU under torchrun), else 0. `torch.cuda.set_device` is called, so memory
    queries, streams and synchronisation of every rank use its own GPU, not cuda:0.
    """
    env = os.environ if env is None else env
    gpu = None if gpu in (None, "", "cpu") else str(gpu)
    local_rank = env.get("LOCAL_RANK")
    if device == "cpu":
        if gpu is not None or local_rank is not None:
            logger.info("--device cpu: the GPU index is ignored")
        return torch.device("cpu")
    if device != "auto" and not device.startswith("cuda"):
        raise DistDiffError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:<i>")
    if not torch.cuda.is_available():
        if device.startswith("cuda"):
            raise _no_cuda_error(f"--device {device}")
        if gpu is not None:
            raise _no_cuda_error(f"GPU index {gpu} (--gpu)")
        if local_rank is not None:
            raise _no_cuda_error(f"LOCAL_RANK={local_rank} (torchrun)")
        listed = listed_gpus()
        if listed:
            raise DistDiffError(f"nvidia-smi lists {len(listed)} GPU(s) but torch cannot use CUDA ({cuda_report()}); "
                                "install the torch build that matches the driver (INSTALL.md), or pass "
                                "--device cpu to run on the CPU anyway")
        logger.warning("no GPU on this machine: running on the CPU")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    index = _cuda_index(device, gpu, local_rank, count)
    if not 0 <= index < count:
        raise DistDiffError(f"GPU {index} asked for, but this process sees {count} GPU(s) "
                            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.cuda.set_device(index)
    logger.info("device cuda:%d (%s)%s", index, torch.cuda.get_device_name(index),
                f", LOCAL_RANK {local_rank}" if local_rank is not None else "")
    return torch.device(f"cuda:{index}")


def _cuda_index(device, gpu, local_rank, count):
    """The CUDA index from cuda:<i>, the GPU index or LOCAL_RANK (in that order), else 0. Ranks
    beyond the GPU count share GPUs round robin (e.g. 2 processes on a 1-GPU test machine)."""
    try:
        if ":" in device:
            return int(device.split(":", 1)[1])
        if gpu is not None:
            return int(gpu)
    except ValueError:
        raise DistDiffError(f"GPU index {gpu if ':' not in device else device!r} is not a number") from None
    return int(local_rank) % count if local_rank is not None else 0


def peak_memory_line(device):
    """', peak CUDA memory N MB on cuda:i' for a CUDA device (this process's own), else ''."""
    if device.type != "cuda":
        return ""
    return f", peak CUDA memory {torch.cuda.max_memory_allocated(device) >> 20} MB on {device}"


def autocast_dtype(precision):
    """Map --precision to the autocast dtype (None means full fp32)."""
    if precision not in PRECISIONS:
        raise DistDiffError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def resolve_precision(precision, device):
    """--precision auto: fp16 on CUDA (the authors' choice for the pipeline), fp32 on the CPU."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def pipeline_dtype(precision, device):
    """Diffusion pipeline dtype; half precision only on CUDA (CPU kernels are fp32-first)."""
    dtype = autocast_dtype(resolve_precision(precision, device)) or torch.float32
    if dtype != torch.float32 and device.type != "cuda":
        raise DistDiffError(f"--precision {precision} needs --device cuda; use fp32 on the CPU")
    return dtype
