"""The half-precision loss scale is adaptive and counted, and an item non-finite at every scale is
redone in fp32 before it counts as lost (distdiff/numerics.py, distdiff/expansion.py)."""
import pytest
import torch

from distdiff import numerics
from distdiff.numerics import LossScale, scaled_grad
from distdiff.settings import GUIDED, NONFINITE


@pytest.fixture
def scales_tried(monkeypatch):
    """The loss scale of every backward pass, in order."""
    tried, run = [], numerics._scaled_pass

    def spy(energy_fn, inputs, scale):
        tried.append(scale)
        return run(energy_fn, inputs, scale)
    monkeypatch.setattr(numerics, "_scaled_pass", spy)
    return tried


def overflowing(rows):
    """An energy whose listed rows overflow while the loss scale is above 2^8."""
    scale_of_call = []

    def energy(x):
        values = (x.double() ** 2).flatten(1).sum(1)
        boost = torch.ones(len(x), dtype=torch.float64)
        if scale_of_call and scale_of_call[-1] > 2 ** 8:
            boost[list(rows)] = 1e300
        return values * boost
    return energy, scale_of_call


def test_an_overflow_at_2_16_is_counted_and_the_next_pass_starts_lower(scales_tried, monkeypatch):
    run = numerics._scaled_pass
    energy, scale_of_call = overflowing([0])

    def pass_with_scale(energy_fn, inputs, scale):
        scale_of_call.append(scale)
        return run(energy_fn, inputs, scale)
    monkeypatch.setattr(numerics, "_scaled_pass", pass_with_scale)
    loss_scale, x = LossScale(), torch.ones(2, 3)
    values, (grad,), status = scaled_grad(energy, [x], torch.float16, loss_scale=loss_scale)
    assert scale_of_call == [2 ** 16, 2 ** 8] and status.tolist() == [GUIDED, GUIDED]
    assert torch.allclose(grad, 2 * x)  # item 0 from the retry, item 1 from the first pass
    assert loss_scale.rows_at == {2 ** 16: 1, 2 ** 8: 1, 1.0: 0} and loss_scale.retried == 1
    assert loss_scale.scale == 2 ** 8 and loss_scale.take_row_scales().tolist() == [2 ** 8, 2 ** 16]
    scale_of_call.clear()
    scaled_grad(energy, [x], torch.float16, loss_scale=loss_scale)  # the next batch: no retry at 2^16
    assert scale_of_call == [2 ** 8] and loss_scale.retried == 1
    for _ in range(LossScale.GROWTH_INTERVAL - 1):  # a run of clean passes brings the top rung back
        scaled_grad(energy, [x], torch.float16, loss_scale=loss_scale)
    assert loss_scale.scale == 2 ** 16
    assert loss_scale.counts()["retried_rows"] == 1 and loss_scale.counts()["scale_now"] == 2 ** 16


def test_fp32_passes_are_unscaled_and_not_booked(scales_tried):
    loss_scale = LossScale()
    scaled_grad(lambda x: (x ** 2).sum(1), [torch.ones(2, 3)], torch.float32, loss_scale=loss_scale)
    assert scales_tried == [1.0] and sum(loss_scale.rows_at.values()) == 0 and loss_scale.take_row_scales() is None


def test_a_row_non_finite_at_every_scale_does_not_drag_the_scale_down(scales_tried):
    loss_scale = LossScale()

    def energy(x):  # row 0 is NaN whatever the scale: not an overflow
        return (x ** 2).flatten(1).sum(1) * torch.tensor([float("nan"), 1.0])
    _, _, status = scaled_grad(energy, [torch.ones(2, 3)], torch.float16, loss_scale=loss_scale)
    assert status.tolist() == [NONFINITE, GUIDED] and scales_tried == [2 ** 16, 2 ** 8, 1.0]
    assert loss_scale.scale == 2 ** 16


def test_a_gradient_vanished_below_the_top_rung_retries_at_the_top(scales_tried):
    loss_scale = LossScale()
    loss_scale.rung = 2  # left at scale 1 by earlier overflows

    def energy(x):  # through an fp16 op: d/dx = 6.7e-9, below fp16's smallest subnormal (6e-8) unless scaled
        return ((x.half() * 1e-4).float() ** 2).mean(1)
    _, (grad,), status = scaled_grad(energy, [torch.ones(2, 3)], torch.float16, loss_scale=loss_scale)
    assert scales_tried == [1.0, 2 ** 16] and status.tolist() == [GUIDED, GUIDED]
    assert torch.allclose(grad, torch.full((2, 3), 2e-8 / 3), rtol=0.05) and loss_scale.retried == 2
    assert loss_scale.rows_at[2 ** 16] == 2 and loss_scale.scale == 1.0  # no overflow: the rung stays


class Posteriors:
    """SourceLatents' interface over fixed random posteriors."""

    def __init__(self, sampler, count):
        generator = torch.Generator().manual_seed(3)
        shape = sampler.latent_shape()
        self.values = [(torch.randn(shape, generator=generator).to(sampler.dtype),
                        torch.full(shape, 0.1).to(sampler.dtype)) for _ in range(count)]

    def get(self, index):
        return self.values[index]


def half_sampler(tiny_pipe, random_guide):
    """A GuidedSampler on the tiny digits pipeline in bf16 (the CPU's half type), random prototypes."""
    from distdiff.generation import load_guide
    from distdiff.pipeline import load_pipeline
    from distdiff.sampler import GuidedSampler
    from distdiff.settings import GuidanceConfig, SampleConfig

    cpu = torch.device("cpu")
    pipe = load_pipeline(tiny_pipe, cpu, torch.bfloat16)
    guide, guide_input, _ = load_guide(random_guide, 10, cpu)
    generator = torch.Generator().manual_seed(0)
    protos = {"class_protos": torch.randn(10, guide.num_features, generator=generator),
              "group_protos": torch.randn(10, 3, guide.num_features, generator=generator),
              "group_mask": torch.ones(10, 3, dtype=torch.bool)}
    prompts = [[f"a photo of the digit {d}"] for d in range(10)]
    return GuidedSampler(pipe, guide, guide_input, protos, prompts, SampleConfig(num_steps=4),
                         GuidanceConfig(guidance_step=2), cpu)


@pytest.mark.slow
@pytest.mark.parametrize("nan_in_fp32", [False, True])
def test_an_item_non_finite_at_every_scale_is_redone_in_fp32(tiny_pipe, random_guide, monkeypatch, nan_in_fp32):
    from distdiff import generation
    from distdiff.sampler import GuidedSampler
    from distdiff.shards import WorkItem

    sampler = half_sampler(tiny_pipe, random_guide)
    energy = GuidedSampler.image_energy

    def first_row_nan(self, x0, labels):  # row 0 is NaN in half precision (in fp32 too if asked)
        values = energy(self, x0, labels)
        if torch.is_grad_enabled() and (self.dtype != torch.float32 or nan_in_fp32) and labels[0] == 0:
            values = values * torch.tensor([float("nan")] + [1.0] * (len(values) - 1))
        return values
    monkeypatch.setattr(GuidedSampler, "image_energy", first_row_nan)
    block = [WorkItem(i, 0, i, f"/d/{i}/{i}.png", i) for i in range(2)]
    result = generation.sample_block(sampler, Posteriors(sampler, 2), block, seed=0, repeats=1)
    assert result.upcast.tolist() == [True, False]
    assert result.status.tolist() == ([NONFINITE] if nan_in_fp32 else [GUIDED]) + [GUIDED]
    assert result.loss_scale[1] == 2 ** 16 and torch.isfinite(result.images.float()).all()
    # the half-precision weights and embeddings are back, exactly
    assert sampler.dtype == sampler.pipe.unet.dtype == torch.bfloat16 and sampler.prompt_embeds.dtype == torch.bfloat16
    assert next(sampler.pipe.vae.decoder.parameters()).dtype == torch.bfloat16
    assert next(sampler.guide.parameters()).dtype == torch.float32
    records = generation._block_records(block, set(block), result, "/d", [str(i) for i in range(10)], 0.1)
    assert [r["loss_scale"] for r in records] == ["fp32", 2 ** 16]
    assert [r["guidance"] for r in records] == (["nonfinite"] if nan_in_fp32 else ["guided"]) + ["guided"]
