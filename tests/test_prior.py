"""The embedded diffusion prior: a smoke run of the real training script, loaded like SD-1.4."""
import logging
import re
import shutil

import pytest
import torch
from PIL import Image

from conftest import PRIOR_SMOKE as SMOKE
from conftest import SMOKE_PRIOR, run_main

# What diffusers and transformers log when checkpoint keys and model parameters disagree.
WEIGHT_PROBLEMS = re.compile(r"missing|unexpected|not used|newly initialized|not initialized",
                             re.IGNORECASE)
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
               "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


class Collect(logging.Handler):
    """Keeps every record logged while attached."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_pipeline(folder):
    """StableDiffusionImg2ImgPipeline.from_pretrained(folder) plus the library log messages."""
    from diffusers import StableDiffusionImg2ImgPipeline
    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    for lib_logger in loggers:
        lib_logger.addHandler(handler)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(folder))
    finally:
        for lib_logger in loggers:
            lib_logger.removeHandler(handler)
    return pipe, [m for m in handler.messages if WEIGHT_PROBLEMS.search(m)]


def class_prompts_and_images(spec):
    """One prompt and one 3-shot train image per class, in label order."""
    folders = sorted(p for p in (spec.root / "train").iterdir() if p.is_dir())
    prompts = [spec.prompt(f.name) for f in folders]
    images = [Image.open(sorted(f.glob("*.png"))[0]).convert("RGB") for f in folders]
    return prompts, images


def unet_weights(folder):
    from safetensors.torch import load_file
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_smoke_prior_loads_like_stable_diffusion(smoke_prior, digits_ready):
    out = smoke_prior
    folder, work = out / SMOKE_PRIOR, out / f"{SMOKE_PRIOR}.work"
    assert folder.is_dir()
    for name in ("args.yaml", "log.txt", "state.pt", "latents.pt"):
        assert (work / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == [SMOKE_PRIOR, f"{SMOKE_PRIOR}.work"]  # no temp dir left
    # SD's tokenizer folder files, learned offline, next to transformers 5's tokenizer.json.
    assert (folder / "tokenizer" / "merges.txt").read_text().startswith("#version")
    assert (folder / "tokenizer" / "vocab.json").is_file()

    pipe, problems = load_pipeline(folder)
    assert problems == []
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert {k: pipe.scheduler.config[k] for k in SD_SCHEDULE} == SD_SCHEDULE
    assert pipe.safety_checker is None
    # The latent scale was measured, not left at SD's default.
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)

    prompts, images = class_prompts_and_images(digits_ready)
    result = pipe(prompts, image=images, strength=0.5, num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0)).images
    assert len(result) == len(prompts) == 10
    assert all(img.size == images[0].size == (32, 32) for img in result)


@pytest.mark.slow
def test_weight_check_flags_a_damaged_folder(smoke_prior, tmp_path):
    """The no-missing-keys assertion above can fail: a renamed UNet key is reported."""
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(smoke_prior / SMOKE_PRIOR, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["renamed.weight"] = state.pop("conv_in.weight")
    save_file(state, weights, metadata={"format": "pt"})
    _, problems = load_pipeline(broken)
    assert any("conv_in.weight" in m for m in problems), problems


@pytest.mark.slow
def test_rerun_of_a_finished_prior_is_a_noop(smoke_prior, capsys):
    out = smoke_prior
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run_main("scripts.train_prior", *SMOKE, "--out", out)
    assert "is complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights_and_a_resume_changes_nothing(smoke_prior, tmp_path):
    """At the configured 2 threads: the text-encoder gather used to add gradients into repeated
    rows in a timing-dependent order, so two runs ended with different UNets. A run killed at UNet
    step 5 (after the checkpoint at step 3) and rerun ends bit-identical to the fixture's run: its
    steps 1-3 come from one process and 4-8 from another, so this checks the resume and the
    run-to-run determinism of every step at once."""
    reference = unet_weights(smoke_prior / SMOKE_PRIOR)
    real_clip, calls = torch.nn.utils.clip_grad_norm_, []

    def crash_at_step_five(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_clip(*args, **kwargs)
    resumed = tmp_path / "resumed"
    torch.nn.utils.clip_grad_norm_ = crash_at_step_five
    try:
        with pytest.raises(KeyboardInterrupt):
            run_main("scripts.train_prior", *SMOKE, "--out", resumed)
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    assert not (resumed / SMOKE_PRIOR).exists()
    assert torch.load(resumed / f"{SMOKE_PRIOR}.work" / "state.pt", weights_only=True)["unet_step"] == 3
    run_main("scripts.train_prior", *SMOKE, "--out", resumed)
    assert all(torch.equal(reference[k], v) for k, v in unet_weights(resumed / SMOKE_PRIOR).items())
