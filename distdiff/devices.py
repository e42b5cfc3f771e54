"""Seeding, CPU settings, devices and precisions.

The device rule is strict so that a first GPU run cannot quietly run on the CPU: a GPU index
(`--gpu`, the GPUS of the shell chains, torchrun's LOCAL_RANK) or `--device cuda` on a machine
where torch cannot use CUDA is a one-line error naming torch's CUDA build and the driver (or,
where CUDA_VISIBLE_DEVICES names a GPU the driver does not list, how many it lists);
`--device auto` falls back to the CPU only where no NVIDIA GPU exists at all, and says so. Under
torchrun each local rank takes its own GPU.
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


def local_ranks(env=None):
    """(this process's local rank, processes on this node) under torchrun or accelerate, else None."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env:
        return None
    try:
        rank = int(env["LOCAL_RANK"])
        size = int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", rank + 1)))
    except ValueError:
        raise DistDiffError(f"LOCAL_RANK={env['LOCAL_RANK']!r} / LOCAL_WORLD_SIZE: not numbers") from None
    return rank, size


def check_visible_devices(env=None):
    """A one-line error where CUDA_VISIBLE_DEVICES (the GPUS of the shell chains) names a GPU index
    that the driver does not list: CUDA then hides every GPU, which torch would report as a build
    problem."""
    env = os.environ if env is None else env
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    check_gpu_list([v for v in visible if v.isdigit()],
                   f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')} names GPU")


def resolve_device(device="auto", gpu=None, env=None):
    """Turn --device/--gpu (and torchrun's LOCAL_RANK) into a torch.device, and make it current.

    Under torchrun with several processes on the node, the local rank decides the GPU (one per
    rank, shared round robin where ranks outnumber GPUs), and an explicit index (`--gpu`, which the
    authors' launcher always passes, or `cuda:<i>`) is ignored with a note: obeyed, it would stack
    every rank on one GPU. Otherwise the index comes from `cuda:<i>`, else `gpu` (the authors'
    positional), else 0. `torch.cuda.set_device` is called, so memory queries, streams and
    synchronisation of every rank use its own GPU, not cuda:0.
    """
    env = os.environ if env is None else env
    gpu = None if gpu in (None, "", "cpu") else str(gpu)
    ranks = local_ranks(env)
    local_rank = env.get("LOCAL_RANK")
    if device == "cpu":
        if gpu is not None or local_rank is not None:
            logger.info("--device cpu: the GPU index is ignored")
        return torch.device("cpu")
    if device != "auto" and not device.startswith("cuda"):
        raise DistDiffError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:<i>")
    if not torch.cuda.is_available():
        check_visible_devices(env)
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
    index = cuda_index(device, gpu, ranks, count)
    if not 0 <= index < count:
        raise DistDiffError(f"GPU {index} asked for, but this process sees {count} GPU(s) "
                            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    torch.cuda.set_device(index)
    sharing = ranks_on_device(index, count, env)
    logger.info("device cuda:%d (%s)%s", index, torch.cuda.get_device_name(index),
                f", LOCAL_RANK {local_rank}" if local_rank is not None else "")
    if sharing > 1:
        logger.warning("%d local ranks share cuda:%d (%d GPU(s) for %d ranks): each sizes its batch from its share "
                       "of the free memory", sharing, index, count, ranks[1])
    return torch.device(f"cuda:{index}")


def cuda_index(device, gpu, ranks, count):
    """The CUDA index: the local rank's (modulo the GPU count) under torchrun with several local
    processes, else cuda:<i>, else the GPU index, else 0."""
    explicit = device.split(":", 1)[1] if ":" in device else gpu
    if ranks is not None and ranks[1] > 1:
        if explicit is not None:
            logger.info("torchrun: LOCAL_RANK %d decides the GPU; the explicit GPU index %s is ignored", ranks[0],
                        explicit)
        return ranks[0] % count
    try:
        return int(explicit) if explicit is not None else (ranks[0] % count if ranks is not None else 0)
    except ValueError:
        raise DistDiffError(f"GPU index {explicit!r} is not a number") from None


def ranks_on_device(index, count, env=None):
    """How many local ranks (torchrun) use cuda:<index> (1 without torchrun)."""
    ranks = local_ranks(env)
    if ranks is None or ranks[1] <= 1:
        return 1
    return sum(1 for rank in range(ranks[1]) if rank % count == index)


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


def train_precision(precision, device):
    """(resolved name, autocast dtype or None) of a training run's --precision: auto is bf16 on
    CUDA where the GPU has it (Ampere and later), else fp16 (with a GradScaler), and fp32 on the
    CPU; half precision asked for on the CPU is an error, never a silent fp32 run."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32", None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = autocast_dtype(precision)
    if dtype is not None and device.type != "cuda":
        raise DistDiffError(f"--precision {precision} needs --device cuda; use auto or fp32 on the CPU")
    return precision, dtype


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


def check_gpu_list(gpus, what="GPUS names"):
    """A one-line error where a list of GPU indices (the shell chains' GPUS) names one the driver
    does not list; nothing to check on a machine without a driver."""
    listed = listed_gpus()
    wrong = [g for g in gpus if not g.isdigit() or (listed and int(g) >= len(listed))]
    if wrong:
        seen = f"nvidia-smi lists {len(listed)} GPU(s) (indices 0-{len(listed) - 1})" if listed else "indices are numbers"
        hint = "; fix GPUS or the GPU argument" if listed else ""
        raise DistDiffError(f"{what} {', '.join(wrong)}, but {seen}{hint}")


if __name__ == "__main__":
    # `python -m distdiff.devices 0 1 2 3`: the shell chains check GPUS before starting any process.
    import sys

    try:
        check_gpu_list(sys.argv[1:])
    except DistDiffError as err:
        sys.exit(f"error: {err}")
