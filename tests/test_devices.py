"""Device choice on a GPU node, with CUDA faked: under torchrun each local rank takes its own GPU
whatever --gpu says, ranks that share a GPU share its free memory, and a GPUS index the driver
does not list is named as such."""
import logging

import pytest
import torch

from distdiff import DistDiffError, devices


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda reporting `count` GPUs; returns a setter and the set_device calls."""
    calls = []

    def gpus(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", calls.append)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    return gpus, calls


def torchrun(rank, size):
    return {"LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(size), "RANK": str(rank), "WORLD_SIZE": str(size)}


def test_under_torchrun_the_local_rank_beats_the_authors_gpu_0(fake_cuda, caplog):
    gpus, calls = fake_cuda
    gpus(4)
    with caplog.at_level(logging.INFO, logger="distdiff.devices"):
        chosen = [devices.resolve_device("auto", "0", env=torchrun(rank, 4)) for rank in range(4)]
    assert chosen == [torch.device("cuda", i) for i in range(4)] and calls == [0, 1, 2, 3]
    assert "LOCAL_RANK 3 decides the GPU; the explicit GPU index 0 is ignored" in caplog.text
    assert devices.resolve_device("cuda:0", None, env=torchrun(2, 4)) == torch.device("cuda", 2)


def test_an_explicit_index_still_wins_outside_torchrun_and_for_one_local_process(fake_cuda):
    gpus, _ = fake_cuda
    gpus(4)
    assert devices.resolve_device("auto", "2", env={}) == torch.device("cuda", 2)
    assert devices.resolve_device("cuda:3", None, env={}) == torch.device("cuda", 3)
    assert devices.resolve_device("auto", "1", env=torchrun(0, 1)) == torch.device("cuda", 1)
    with pytest.raises(DistDiffError, match=r"GPU 5 asked for, but this process sees 4 GPU\(s\)"):
        devices.resolve_device("auto", "5", env={})


def test_two_ranks_on_one_gpu_share_it_and_halve_the_auto_batch(fake_cuda, monkeypatch, caplog):
    from distdiff import generation, memory

    gpus, _ = fake_cuda
    gpus(1)
    with caplog.at_level(logging.WARNING, logger="distdiff.devices"):
        chosen = {devices.resolve_device("auto", "0", env=torchrun(rank, 2)) for rank in range(2)}
    assert chosen == {torch.device("cuda", 0)} and "2 local ranks share cuda:0" in caplog.text
    monkeypatch.setattr(memory, "pipeline_image_memory", lambda *a: memory.ImageMemory(4 * memory.GIB, memory.GIB,
                                                                                       memory.GIB // 2))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (41 * memory.GIB, 80 * memory.GIB))
    cuda0 = torch.device("cuda", 0)
    for name, value in torchrun(1, 2).items():
        monkeypatch.setenv(name, value)
    assert generation.choose_batch_size("auto", None, None, 224, 512, True, cuda0, False, 2) == (4, False)  # 20.5 GiB
    for name in torchrun(1, 2):
        monkeypatch.delenv(name)
    assert generation.choose_batch_size("auto", None, None, 224, 512, True, cuda0, False, 2) == (9, False)  # 41 GiB


def test_a_gpus_index_the_driver_does_not_list_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CUDA hides every GPU for a bad index
    monkeypatch.setattr(devices, "listed_gpus", lambda: [f"GPU {i}: NVIDIA H100" for i in range(4)])
    with pytest.raises(DistDiffError, match=r"CUDA_VISIBLE_DEVICES=5 names GPU 5, but nvidia-smi lists 4 GPU\(s\) "
                                            r"\(indices 0-3\); fix GPUS"):
        devices.resolve_device("auto", "0", env={"CUDA_VISIBLE_DEVICES": "5"})
    with pytest.raises(DistDiffError, match="torch cannot use CUDA"):  # a listed index: the build's problem
        devices.resolve_device("auto", "0", env={"CUDA_VISIBLE_DEVICES": "3"})


def test_the_shell_chains_gpus_list_is_checked_against_the_driver(monkeypatch):
    monkeypatch.setattr(devices, "listed_gpus", lambda: [f"GPU {i}: NVIDIA H100" for i in range(2)])
    devices.check_gpu_list(["0", "1"])
    with pytest.raises(DistDiffError, match=r"GPUS names 2, x, but nvidia-smi lists 2 GPU\(s\) \(indices 0-1\)"):
        devices.check_gpu_list(["0", "2", "x"])
    monkeypatch.setattr(devices, "listed_gpus", lambda: [])  # no driver: the processes say so themselves
    devices.check_gpu_list(["7"])
