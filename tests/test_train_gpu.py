"""Retraining that feeds a GPU, checked on the CPU: the CUDA defaults (bf16 or fp16 autocast,
channels_last, cuDNN benchmark) resolve and are recorded, the loop runs with them, every image is
decoded once before the first step, and /dev/shm too small for the workers lowers their number
instead of killing them."""
import logging

import pytest
import torch
import yaml
from PIL import ImageFile

from conftest import run_main
from distdiff import DistDiffError, devices, engine
from distdiff.engine import PREFETCH_FACTOR, sample_bytes, shm_safe_workers

MB = 1 << 20


def test_precision_auto_is_bf16_on_cuda_fp16_without_it_and_fp32_on_the_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert devices.train_precision("auto", cpu) == ("fp32", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.train_precision("auto", cuda) == ("bf16", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # V100, T4: fp16 with a GradScaler
    assert devices.train_precision("auto", cuda) == ("fp16", torch.float16)
    assert devices.train_precision("fp32", cuda) == ("fp32", None)
    with pytest.raises(DistDiffError, match="--precision bf16 needs --device cuda"):
        devices.train_precision("bf16", cpu)


def test_amp_off_and_the_authors_preset_give_fp32(tmp_path):
    from distdiff.options import add_train_flags, parse_train_args
    import argparse

    def parsed(*argv):
        return parse_train_args(add_train_flags(argparse.ArgumentParser()), ["digits", *argv], "original")
    assert parsed().precision == "auto" and parsed().channels_last == "auto"
    assert parsed("--amp", "off").precision == "fp32" and parsed("--precision", "bf16").precision == "bf16"
    assert parsed("--preset", "authors").precision == "fp32"  # their train.py has no autocast
    assert parsed("--channels_last", "False").channels_last is False


def test_the_cpu_run_records_what_it_resolved(tmp_path, digits_ready):
    run_main("train_original", "digits", "--epochs", "1", "--batch_size", "8", "--threads", "1",
             "--output", tmp_path)
    args = yaml.safe_load(next(tmp_path.rglob("args.yaml")).read_text())
    assert args["precision"] == "auto" and args["precision_resolved"] == "fp32"
    assert args["channels_last_resolved"] is False and args["cudnn_benchmark"] is False


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_the_loop_runs_in_half_precision_with_channels_last_and_resumes_the_scaler(tmp_path, amp_dtype):
    """engine.fit as it runs on CUDA (autocast, NHWC, a GradScaler for fp16), here on the CPU."""
    torch.manual_seed(0)
    images, labels = torch.randn(24, 3, 16, 16), torch.arange(24) % 3
    data = torch.utils.data.TensorDataset(images, labels)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 3))
    from distdiff.recipe import TrainConfig
    recipe = TrainConfig(dataset="tensors", epochs=2, batch_size=8, eval_batch_size=8, workers=0, channels_last=True)
    results = engine.fit(tmp_path, model, data, None, data, torch.device("cpu"), {}, recipe, amp_dtype=amp_dtype)
    assert results["epochs"] == 2 and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ("scaler" in last) == (amp_dtype == torch.float16)


def test_small_dev_shm_lowers_the_workers_instead_of_a_bus_error(caplog):
    batch = sample_bytes(64, 224)  # 38.5 MB: the paper's batch at 224 px in float32
    assert batch == 64 * 3 * 224 * 224 * 4
    assert shm_safe_workers(8, batch, free_bytes=8 << 30) == 8
    with caplog.at_level(logging.WARNING, logger="distdiff.engine"):
        assert shm_safe_workers(8, batch, free_bytes=64 * MB) == 0  # a container's default /dev/shm
    assert "/dev/shm has 64 MB free" in caplog.text and "--shm-size" in caplog.text
    assert shm_safe_workers(8, batch, free_bytes=4 * PREFETCH_FACTOR * batch * 2) == 4
    assert shm_safe_workers(0, batch, free_bytes=0) == 0


def test_every_image_is_decoded_once_before_training(tmp_path, monkeypatch):
    """Cached splits are decoded into the cache, a split the cache cannot hold is decoded once to
    check it; the size estimate reads headers only."""
    from distdiff import registry
    from distdiff.training import TrainConfig, build_datasets
    from test_bad_input import make_tree

    root = make_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=4)
    decodes, load = [], ImageFile.ImageFile.load

    def counted(self):
        if self.tile:
            decodes.append(self.filename)
        return load(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    spec = registry.get_dataset(f"folder:{root}")
    for cache_mb in ("auto", 0):
        decodes.clear()
        cfg = TrainConfig(dataset=spec.name, image_size=16, resize_size=18, cache_mb=cache_mb)
        train, val, test, *_ = build_datasets(spec, cfg, threads=2)  # val: 2 per class held out of train/
        assert len(decodes) == len(set(decodes)) == len(train) + len(val) + len(test) == 24, cache_mb
