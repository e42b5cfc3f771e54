"""The device rule: a GPU asked for where torch cannot use CUDA is a one-line error, never a
quiet CPU run; --device auto uses the CPU only where no GPU exists, and says so.

Every test runs on a GPU machine too, except the ones that assert the behaviour without CUDA;
the CUDA-only ones skip on the CPU."""
import logging

import pytest
import torch

from distdiff import DistDiffError
from distdiff import devices

without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@without_cuda
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


@without_cuda
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


# -- guarded half-precision guidance ------------------------------------------------------------

def half_dtype():
    """fp16 where this CPU has fp16 convolutions, else bf16."""
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 1, 1, dtype=torch.float16))
        return torch.float16
    except RuntimeError:
        return torch.bfloat16


def decoder_energy(dtype, weight=1.0):
    """A small decoder-shaped network (latent 4x32x32 -> image 3x256x256) in `dtype`, scored in fp32
    as the sampler does (the guide runs in fp32): the energy of the transform's (a, b)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Upsample(scale_factor=8),
                              torch.nn.Conv2d(16, 3, 3, padding=1)).to(dtype).requires_grad_(False)
    z, target = torch.randn(2, 4, 32, 32), torch.randn(3)

    def energy(a, b):
        features = net((z * (1 + a) + b).to(dtype)).float().mean(dim=(2, 3))
        return weight * (torch.nn.functional.normalize(features, dim=1) - target).norm(dim=1)
    return energy


def test_scaled_half_gradient_matches_fp32_where_the_unscaled_one_vanishes():
    from distdiff import numerics as guidance

    dtype = half_dtype()
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 4, 1, 1, generator=generator), torch.randn(2, 4, 1, 1, generator=generator)
    # A small energy weight puts the per-pixel gradients below half precision's range, as an O(1)
    # energy over a 512-px image does at SD scale.
    _, reference, status = guidance.scaled_grad(decoder_energy(torch.float32, 1e-4), [a, b], torch.float32)
    assert (status == guidance.GUIDED).all()
    _, scaled, status = guidance.scaled_grad(decoder_energy(dtype, 1e-4), [a, b], dtype)
    assert (status == guidance.GUIDED).all()
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(scaled), flat(reference), dim=0) > 0.99
    assert 0.9 < flat(scaled).norm() / flat(reference).norm() < 1.1
    if dtype == torch.float16:  # bf16 has fp32's exponent range: nothing underflows unscaled
        _, unscaled, status = guidance.scaled_grad(decoder_energy(dtype, 1e-4), [a, b], dtype, scales=(1.0,))
        assert (status == guidance.ZERO_GRADIENT).all() and flat(unscaled).abs().max() == 0


def test_an_overflowing_scale_is_retried_smaller_per_item():
    from distdiff import numerics as guidance

    calls = []

    def energy(x):  # item 0's scaled gradient overflows fp32 at the first scale only
        calls.append(1)
        values = (x ** 2).flatten(1).sum(1)
        return values * torch.tensor([1e300 if len(calls) == 1 else 1.0, 1.0], dtype=torch.float64)
    x = torch.ones(2, 3, dtype=torch.float64)
    values, (grad,), status = guidance.scaled_grad(energy, [x], torch.float16)
    assert len(calls) == 2 and status.tolist() == [guidance.GUIDED, guidance.GUIDED]
    assert torch.allclose(grad.double(), 2 * x)


# -- memory model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_memory_model_halves_in_fp16_and_plans_checkpointing_only_when_needed():
    from distdiff import memory
    from models.classifiers import create_classifier
    from embedded.sd_shapes import build_shape

    parts = build_shape("sd14", device="meta")
    with torch.device("meta"):
        guide = create_classifier("resnet50", 100, False).eval().requires_grad_(False)
    per_dtype = {}
    for dtype in (torch.float32, torch.float16):
        unet, vae = parts["unet"].to(dtype).requires_grad_(False), parts["vae"].to(dtype).requires_grad_(False)
        per_dtype[dtype] = memory.image_memory(memory.count_lookahead(unet, vae, guide, 64, 77, 768, 224, 2, dtype))
    fp32, fp16 = per_dtype[torch.float32], per_dtype[torch.float16]
    assert fp32.plain > fp32.checkpointed > fp32.unguided > 0
    assert 0.45 < fp16.plain / fp32.plain < 0.6  # the guide stays fp32, the rest halves
    gib = memory.GIB
    assert memory.plan_batch(80 * gib, fp16, guided=True) == (memory.largest_batch(80 * gib, fp16.plain), False)
    tight = memory.RESERVE_BYTES + (fp16.plain - 1) * memory.FRAGMENTATION  # one plain image does not fit
    assert memory.plan_batch(tight, fp16, guided=True) == (memory.largest_batch(tight, fp16.checkpointed), True)
    assert memory.plan_batch(memory.RESERVE_BYTES, fp16, guided=True)[0] == 0
    assert memory.plan_batch(80 * gib, fp16, guided=False)[0] > memory.plan_batch(80 * gib, fp16, guided=True)[0]


def test_scheduler_must_be_ddim_with_sd14_values():
    from diffusers import DDIMScheduler, PNDMScheduler

    from distdiff.pipeline import check_scheduler

    assert check_scheduler(DDIMScheduler(clip_sample=False, steps_offset=1))
    with pytest.raises(DistDiffError, match="clip_sample.*steps_offset.*differs from SD-1.4"):
        check_scheduler(DDIMScheduler())  # DDIM's own defaults: clip_sample=True, steps_offset=0
    with pytest.raises(DistDiffError, match="needs a DDIMScheduler, got PNDMScheduler"):
        check_scheduler(PNDMScheduler())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/test_expand.py checks the casts on the CPU)")
def test_the_authors_precision_placement_on_cuda(tmp_path):
    """--preset authors on CUDA: UNet and VAE decoder in fp16, VAE encoder and text encoder fp32."""
    from distdiff.pipeline import load_pipeline
    from embedded.prior import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "pipe", ["a photo of a disc", "a photo of a ring"])
    pipe = load_pipeline(folder, torch.device("cuda"), torch.float16, encode_dtype=torch.float32)
    assert pipe.unet.dtype == torch.float16 and next(pipe.vae.decoder.parameters()).dtype == torch.float16
    assert next(pipe.vae.encoder.parameters()).dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert pipe.unet.device.type == "cuda"
