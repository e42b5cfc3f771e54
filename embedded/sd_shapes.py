"""Stable Diffusion pipelines with the published shapes and random weights, built offline.

    build_shape("sd14", device="meta")   # SD-1.4's UNet / VAE / CLIP ViT-L/14 text encoder, no memory
    build_shape("sd14")                  # the same with seeded random weights (benchmarks only)
    save_rehearsal_pipeline(dir, prompts) # a tiny pipeline laid out like CompVis/stable-diffusion-v1-4
    save_shape_pipeline("sd14", dir)      # SD-1.4's shape, random fp16 weights, in that layout

The cost of a network (time, activation memory) depends on its shape, not on its weights, so the
benchmarks measure SD-scale cost on these. Their images are noise: expand_distdiff.py refuses a
`shape:` model. The configs below are written out from the model repositories' config.json files
(CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-2-1-base); keys not listed take the
diffusers/transformers defaults, which match those files.
"""
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from embedded.prior import build_components, build_tokenizer, export_vocab_files

_SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# The scheduler SD-1.4 and 2.1-base ship (expand_distdiff.py swaps in DDIM from this config).
SD_PNDM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
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
    scheduler = PNDMScheduler(**SD_PNDM)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def shape_pipeline(name, device="cpu", dtype=torch.float32, seed=0, prompts=("a photo of a thing",)):
    """StableDiffusionImg2ImgPipeline of random-weight `name` components (benchmarks only)."""
    parts = build_shape(name, "cpu", seed, prompts)
    pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    return pipe.to(device, dtype)


def save_rehearsal_pipeline(out_dir, prompts, seed=0):
    """A tiny untrained pipeline in CompVis/stable-diffusion-v1-4's layout, for the paper-path test.

    SD-1.4's config where it matters: 512 px images from 64x64x4 latents (a 4-level VAE), the
    scaling factor 0.18215, SD's PNDM scheduler config (the expander swaps in DDIM from it), a CLIP
    tokenizer folder with 77-token prompts, a feature extractor, and a model_index.json that lists
    the safety checker as SD-1.4's does (its weights are absent; the expander never loads it).
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
    pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=CLIPImageProcessor(),
                                          requires_safety_checker=False)
    return save_like_sd14(pipe, out_dir)


def save_shape_pipeline(name, out_dir, prompts=("a photo of a thing",), dtype=torch.float16, seed=0):
    """The random-weight `name` pipeline saved in CompVis/stable-diffusion-v1-4's layout and `dtype`
    (scripts/gpu_check.sh loads SD-1.4's shape through the real Hub-id path from it)."""
    return save_like_sd14(shape_pipeline(name, dtype=dtype, seed=seed, prompts=prompts), out_dir)


def save_like_sd14(pipe, out_dir):
    """save_pretrained, plus the tokenizer's vocab/merges files and a model_index.json that lists
    the safety checker as SD-1.4's does (its weights are absent; the expander never loads it)."""
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    export_vocab_files(pipe.tokenizer, out_dir / "tokenizer")
    index = json.loads((out_dir / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], requires_safety_checker=True)
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out_dir
