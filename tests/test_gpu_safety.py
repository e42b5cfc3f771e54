"""The device rule: a GPU asked for where torch cannot use CUDA is a one-line error, never a
quiet CPU run; --device auto uses the CPU only where no GPU exists, and says so."""
import logging

import pytest
import torch

from distdiff import DistDiffError
from distdiff import devices

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@pytest.mark.parametrize("device, gpu, env, asked", [
    ("cuda", None, {}, "--device cuda"),
    ("cuda:1", None, {}, "--device cuda:1"),
    ("auto", "0", {}, r"GPU index 0 \(--gpu\)"),
    ("auto", None, {"LOCAL_RANK": "1"}, r"LOCAL_RANK=1 \(torchrun\)"),
])
def test_a_gpu_asked_for_without_cuda_is_an_error_naming_build_and_driver(device, gpu, env, asked):
    with pytest.raises(DistDiffError, match=asked + r" asks for a GPU but torch cannot use CUDA here "
                                                    r"\(torch .*, CUDA build .*, .*driver.*\).*--device cpu"):
        devices.resolve_device(device, gpu, env=env)


def test_auto_falls_back_to_cpu_only_without_a_gpu_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(devices, "listed_gpus", lambda: [])
    with caplog.at_level(logging.WARNING, logger="distdiff.devices"):
        assert devices.resolve_device("auto", None, env={}) == torch.device("cpu")
    assert "no GPU on this machine: running on the CPU" in caplog.text
    monkeypatch.setattr(devices, "listed_gpus", lambda: ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)"])
    with pytest.raises(DistDiffError, match="nvidia-smi lists 1 GPU.* torch cannot use CUDA"):
        devices.resolve_device("auto", None, env={})


def test_explicit_cpu_wins_over_an_index_and_bad_names_are_errors():
    assert devices.resolve_device("cpu", "0", env={"LOCAL_RANK": "0"}) == torch.device("cpu")
    with pytest.raises(DistDiffError, match="unknown --device 'gpu'"):
        devices.resolve_device("gpu", None, env={})


def test_precision_auto_is_fp32_on_cpu_and_half_needs_cuda():
    cpu = torch.device("cpu")
    assert devices.resolve_precision("auto", cpu) == "fp32" and devices.pipeline_dtype("auto", cpu) == torch.float32
    assert devices.resolve_precision("auto", torch.device("cuda", 0)) == "fp16"
    with pytest.raises(DistDiffError, match="--precision fp16 needs --device cuda"):
        devices.pipeline_dtype("fp16", cpu)
