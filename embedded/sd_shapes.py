"""Stable Diffusion pipelines with the published shapes and random weights, built offline.

    build_shape("sd14", device="meta")   # SD-1.4's UNet / VAE / CLIP ViT-L/14 text encoder, no memory
    build_shape("sd14")                  # the same with seeded random weights (benchmarks only)
    save_rehearsal_pipeline(dir, prompts) # a tiny pipeline in CompVis/stable-diffusion-v1-4's file layout
    save_shape_pipeline("sd14", dir)      # SD-1.4's shape, random fp16 weights, in that layout

The cost of a network (time, activation memory) depends on its shape, not on its weights, so the
benchmarks measure SD-scale cost on these. Their images are noise: expand_distdiff.py refuses a
`shape:` model. The configs below are written out from the model repositories' config.json files
(CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-2-1-base); keys not listed take the
diffusers/transformers defaults, which match those files. The SD14_* files below are SD-1.4's
published ones (its Hub repository's main branch), so that the stand-ins load through the same
code paths as a real snapshot of it.
"""
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from embedded.prior import build_components, build_tokenizer, export_vocab_files

_SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SHAPES = {
    "sd14": dict(  # CompVis/stable-diffusion-v1-4: 859.5M UNet, 83.7M VAE, 123.1M text encoder
        unet=dict(_SD_UNET, cross_attention_dim=768, attention_head_dim=8),
        vae=_SD_VAE,
        text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                  projection_dim=768),
    ),
    "sd21base": dict(  # stabilityai/stable-diffusion-2-1-base: 865.9M UNet, OpenCLIP ViT-H/14 text (340.4M)
        unet=dict(_SD_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                  use_linear_projection=True),
        vae=_SD_VAE,
        text=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512),
    ),
}
SHAPE_PREFIX = "shape:"


# ---------------------------------------------------------------------------
# CompVis/stable-diffusion-v1-4's files as published: the keys and values of its main branch
# (read from a git mirror of the Hub repository's history)
# ---------------------------------------------------------------------------

SD14_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.2.2",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# The scheduler SD-1.4 ships; the expander swaps in DDIM from this config. PNDM ignores
# clip_sample, but the DDIM scheduler built from the config inherits it.
SD14_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.7.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}


def _sd14_token(content, typed=True):
    """A special token as SD-1.4's tokenizer files spell it (tokenizer_config.json adds `__type`)."""
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if typed else token


# The tokenizer folder holds vocab.json, merges.txt and these two files; no tokenizer.json.
SD14_TOKENIZER_CONFIG = {
    "add_prefix_space": False, "bos_token": _sd14_token("<|startoftext|>"), "do_lower_case": True,
    "eos_token": _sd14_token("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14", "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
    "unk_token": _sd14_token("<|endoftext|>"),
}
SD14_SPECIAL_TOKENS_MAP = {
    "bos_token": _sd14_token("<|startoftext|>", False), "eos_token": _sd14_token("<|endoftext|>", False),
    "pad_token": "<|endoftext|>", "unk_token": _sd14_token("<|endoftext|>", False),
}
# The feature extractor's config in its 2022 format (integer sizes, CLIPFeatureExtractor).
SD14_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}
# The safety checker's config.json, abridged: its top-level keys and the two *_config_dict
# entries; the published file also holds transformers' dump of every text and vision default
# (text_config, vision_config), which nothing here reads. Its weights are absent, as in a
# snapshot downloaded without them: the pipeline is loaded with safety_checker=None.
SD14_SAFETY_CHECKER = {
    "_name_or_path": "./safety_module", "architectures": ["StableDiffusionSafetyChecker"],
    "initializer_factor": 1.0, "logit_scale_init_value": 2.6592, "model_type": "clip", "projection_dim": 768,
    "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12},
    "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 24, "patch_size": 14},
    "torch_dtype": "float32", "transformers_version": None,
}
# Every file of a stand-in saved by save_like_sd14: SD-1.4's layout with one weight file per
# model (SD-1.4 also ships .bin, fp16 and non-EMA variants, which a download skips).
SD14_FILES = (
    "feature_extractor/preprocessor_config.json", "model_index.json", "safety_checker/config.json",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


def shape_name(model):
    """'sd14' for 'shape:sd14', None for anything else."""
    model = str(model)
    return model[len(SHAPE_PREFIX):] if model.startswith(SHAPE_PREFIX) else None


def check_shape(name):
    """Raise ValueError for unknown shape names (listing the known ones)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(SHAPE_PREFIX + n for n in SHAPES)}")
    return SHAPES[name]


def build_shape(name, device="cpu", seed=0, prompts=("a photo of a thing",)):
    """Pipeline components with the shapes of `name` and seeded random weights.

    On device="meta" nothing is allocated (parameter counts, FLOP counts). The tokenizer only has
    to produce ids within the text encoder's vocabulary, so its vocabulary is learned from
    `prompts` offline; the sequence length is SD's 77.
    """
    shape = check_shape(name)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**shape["unet"])
        vae = AutoencoderKL(**shape["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**shape["text"], bos_token_id=0, eos_token_id=2, pad_token_id=1))
    tokenizer = build_tokenizer(prompts, max_length=shape["text"]["max_position_embeddings"])
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sd_scheduler())


def sd_scheduler():
    """SD's PNDM scheduler with its config file's clip_sample=False, which PNDM ignores but the DDIM
    scheduler built from this config inherits (DDIM's own default would clip x0 to [-1, 1])."""
    settings = {k: v for k, v in SD14_SCHEDULER.items() if not k.startswith("_") and k != "clip_sample"}
    scheduler = PNDMScheduler(**settings)
    scheduler.register_to_config(clip_sample=SD14_SCHEDULER["clip_sample"])
    return scheduler


def shape_pipeline(name, device="cpu", dtype=torch.float32, seed=0, prompts=("a photo of a thing",)):
    """StableDiffusionImg2ImgPipeline of random-weight `name` components (benchmarks only)."""
    parts = build_shape(name, "cpu", seed, prompts)
    pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    return pipe.to(device, dtype)


def save_rehearsal_pipeline(out_dir, prompts, seed=0):
    """A tiny untrained pipeline in CompVis/stable-diffusion-v1-4's file layout, for the paper-path test.

    SD-1.4's config where it matters: 512 px images from 64x64x4 latents (a 4-level VAE), the
    scaling factor 0.18215, SD's PNDM scheduler config (the expander swaps in DDIM from it), a CLIP
    tokenizer with 77-token prompts, and SD-1.4's files around the models (save_like_sd14).
    Widths are tiny, and attention runs only at the UNet's 16x16 level (SD also attends at 64x64
    and in the VAE's middle, which at this width would cost more than everything else), so a
    512-px image costs about a second on a CPU.
    """
    torch.manual_seed(seed)
    parts = build_components(prompts, image_size=512, vae_channels=(4, 8, 16, 16), unet_channels=(16, 32, 32),
                             text_width=32, text_layers=1, max_length=77, unet_attention=(False, False, True),
                             vae_norm_groups=4, unet_norm_groups=8, heads=2, vae_mid_attention=False)
    parts["vae"].register_to_config(scaling_factor=_SD_VAE["scaling_factor"])
    parts["scheduler"] = sd_scheduler()
    pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    return save_like_sd14(pipe, out_dir)


def save_shape_pipeline(name, out_dir, prompts=("a photo of a thing",), dtype=torch.float16, seed=0):
    """The random-weight `name` pipeline saved in CompVis/stable-diffusion-v1-4's layout and `dtype`
    (scripts/gpu_check.sh loads SD-1.4's shape through the real Hub-id path from it)."""
    return save_like_sd14(shape_pipeline(name, dtype=dtype, seed=seed, prompts=prompts), out_dir)


def save_like_sd14(pipe, out_dir):
    """`pipe` written in CompVis/stable-diffusion-v1-4's file layout (SD14_FILES): the UNet, VAE
    and text encoder by their own save_pretrained, the tokenizer's vocabulary as vocab.json +
    merges.txt, and every other file SD-1.4's published one. That is what a loader meets in a
    snapshot of SD-1.4, unlike a folder that today's `save_pretrained` writes: no tokenizer.json
    (the tokenizer is built from the vocabulary files), the feature extractor's 2022 config, the
    safety checker's config without weights, and a model_index.json naming StableDiffusionPipeline."""
    config = pipe.scheduler.config
    differs = {k: config.get(k) for k, v in SD14_SCHEDULER.items() if not k.startswith("_") and config.get(k) != v}
    if type(pipe.scheduler).__name__ != SD14_SCHEDULER["_class_name"] or differs:
        raise ValueError(f"the pipeline's scheduler ({type(pipe.scheduler).__name__}, {differs}) is not SD-1.4's, "
                         "whose config file this layout holds")
    out_dir = Path(out_dir)
    for name in ("unet", "vae", "text_encoder"):
        getattr(pipe, name).save_pretrained(out_dir / name)
    export_vocab_files(pipe.tokenizer, out_dir / "tokenizer")
    files = {"model_index.json": SD14_MODEL_INDEX, "scheduler/scheduler_config.json": SD14_SCHEDULER,
             "tokenizer/tokenizer_config.json": dict(SD14_TOKENIZER_CONFIG,
                                                     model_max_length=pipe.tokenizer.model_max_length),
             "tokenizer/special_tokens_map.json": SD14_SPECIAL_TOKENS_MAP,
             "feature_extractor/preprocessor_config.json": SD14_PREPROCESSOR,
             "safety_checker/config.json": SD14_SAFETY_CHECKER}
    for name, content in files.items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    return out_dir
