"""The one Stable Diffusion pipeline loader: a local diffusers folder, or a Hub id.

    resolve_model("checkpoint/prior/digits")          -> that folder
    resolve_model("CompVis/stable-diffusion-v1-4")    -> its snapshot in the Hugging Face cache
                                                         (downloaded first when missing and online)

A Hub id is looked up in the cache first, without any network access, so a cached model loads on
a machine without network whether HF_HUB_OFFLINE is set or not, and no process waits on the Hub
for a model it already has. Only a model missing from the cache is downloaded, by diffusers' own
`DiffusionPipeline.download`, and only the components the pipeline loads: the components passed
to it as None (the safety checker, 1.2 GB in SD-1.4) are left out of the files it fetches.
Resolution is cheap and happens before any heavy work; a model that is neither a folder nor in
the cache, nor downloadable, is one error line naming the id, the cache dir and the download command.
"""
import contextlib
import logging
import re
from pathlib import Path

import torch

from distdiff import DistDiffError

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Components load_pipeline replaces by None. Passed to `DiffusionPipeline.download`, they are not
# fetched: diffusers drops the folder of every component given as an argument from its download.
NOT_LOADED = {"safety_checker": None}


def is_hub_id(model):
    """True for 'owner/name' strings that are not an existing path."""
    return bool(HUB_ID.match(str(model))) and not Path(model).exists()


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub in offline mode for a cache look-up. `local_files_only` alone is not enough:
    huggingface_hub 2.x still builds request headers for it, and building them fetches a telemetry
    registry from the Hub (huggingface_hub/utils/_detect_agent.py), a wait of up to 3 s per process
    on a machine without network."""
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def resolve_model(model):
    """The local folder holding `model` (a diffusers folder path, or a Hub id resolved through
    the Hugging Face cache)."""
    if str(model).startswith("shape:"):
        raise DistDiffError(f"--model {model} is an architecture with random weights (for the benchmarks): its "
                            "images would be noise; pass a trained model (a Hub id or a diffusers folder)")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise DistDiffError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return path
    if not is_hub_id(model):
        raise DistDiffError(f"diffusion model folder {model} not found; train the embedded prior with "
                            "scripts/train_prior.py, or pass --model <Hub id or diffusers folder>")
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    try:
        with hub_offline():
            return Path(DiffusionPipeline.download(model, local_files_only=True, **NOT_LOADED))
    except (OSError, ValueError) as err:  # not cached, or cached only in part
        problem = err
    if not constants.HF_HUB_OFFLINE:
        try:
            return Path(DiffusionPipeline.download(model, **NOT_LOADED))
        except (OSError, ValueError, RuntimeError) as err:
            problem = err
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    first = " ".join(str(problem).split())[:200]
    raise DistDiffError(f"diffusion model {model} is not in the Hugging Face cache {constants.HF_HUB_CACHE}"
                        f"{offline} and could not be downloaded ({first}); on a machine with internet run "
                        f"`hf download {model}` and copy the cache here (or point HF_HOME at it), or "
                        "pass --model <local diffusers folder>") from None


def load_pipeline(model, device, dtype=torch.float32, encode_dtype=None):
    """StableDiffusionImg2ImgPipeline from a folder or Hub id, with a DDIM scheduler, frozen.

    With `encode_dtype` (the authors' order: their dataset object encodes the sources with the
    VAE and the prompts with the text encoder before the pipeline is cast to fp16), the VAE
    encoder and the text encoder stay in that dtype and only the UNet and the VAE decoder take
    `dtype`."""
    from diffusers import StableDiffusionImg2ImgPipeline

    folder = resolve_model(model)
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            folder, dtype=encode_dtype or dtype, requires_safety_checker=False, **NOT_LOADED)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistDiffError(f"cannot load the diffusion model {model!r} from {folder} ({first})") from None
    if encode_dtype is not None and encode_dtype != dtype:
        for module in (pipe.unet, pipe.vae.decoder, pipe.vae.post_quant_conv):
            if module is not None:
                module.to(dtype)
    return finish_pipeline(pipe, device, model)


def finish_pipeline(pipe, device, model="the model"):
    """A loaded (or built) pipeline made ready to sample: DDIM scheduler, frozen, on `device`."""
    from diffusers import DDIMScheduler

    # The paper samples with DDIM; SD-1.4 ships PNDM, so swap it keeping the noise schedule.
    pipe.scheduler = check_scheduler(DDIMScheduler.from_config(pipe.scheduler.config), model)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    return pipe.to(device)


# SD-1.4's values, which the DDIM update and the img2img start step assume: DDIM's own defaults
# (clip_sample=True, steps_offset=0) would take effect silently if a config lacked the keys.
SCHEDULER_EXPECTED = {"clip_sample": False, "steps_offset": 1}


def check_scheduler(scheduler, model="the model"):
    """The scheduler, after checking it is DDIM with SD-1.4's clip_sample and steps_offset."""
    from diffusers import DDIMScheduler

    if not isinstance(scheduler, DDIMScheduler):
        raise DistDiffError(f"{model}: the sampler needs a DDIMScheduler, got {type(scheduler).__name__}")
    wrong = {k: scheduler.config.get(k) for k, v in SCHEDULER_EXPECTED.items() if scheduler.config.get(k) != v}
    if wrong:
        raise DistDiffError(f"{model}: scheduler config {wrong} differs from SD-1.4's {SCHEDULER_EXPECTED}; fix "
                            "scheduler/scheduler_config.json of the model folder")
    return scheduler


def speed_up(pipe, channels_last=False, compile_models=False):
    """Optional execution speed-ups; outputs change only at float-rounding level.

    channels_last: NHWC convolutions for the UNet and VAE (faster with cuDNN/tensor cores).
    compile_models: torch.compile the UNet and the VAE decoder, the two modules every step
    calls; the first batch pays the compilation, so it pays off on long runs (CUDA) only.
    """
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_models:
        pipe.unet = torch.compile(pipe.unet)
        pipe.vae.decoder = torch.compile(pipe.vae.decoder)
    return pipe
