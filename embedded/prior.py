"""Builders for a small Stable-Diffusion-shaped text-to-image latent diffusion model.

Every component is the class Stable Diffusion 1.4 uses (AutoencoderKL, UNet2DConditionModel,
DDIMScheduler, CLIPTextModel, CLIPTokenizer), so a folder written by `save_pipeline` loads with
`StableDiffusionImg2ImgPipeline.from_pretrained(path)` exactly like an SD checkpoint. Only the
sizes differ. Nothing here touches the Hub: the tokenizer vocabulary is learned from the
prompts it must encode.
"""
import json
import tempfile
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# SD-1.4's noise schedule; the DDIM flags are the ones SD's scheduler config carries.
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
# CLIP's word split (its tokenizer's pre-tokenizer regex): letters, single digits, other runs.
CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# ---------------------------------------------------------------------------
# Tokenizer: CLIP's byte-level BPE layout, with merges learned from the prompts
# ---------------------------------------------------------------------------

def learn_bpe(prompts):
    """Learn BPE merges from the prompts with `tokenizers`' BpeTrainer, CLIP-style.

    The normaliser and word split are CLIP's, and the trainer runs until no pair is left, so every
    prompt word becomes a single token. Returns (vocab dict token -> id, list of merge pairs) in
    CLIP's order: the 256 byte symbols, their end-of-word forms (so any text tokenizes without
    unknown tokens), the merged tokens, then the two special tokens.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    # Sorted by code point = CLIP's order: printable bytes are themselves, the rest follow above 255.
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(vocab_size=1 << 20, initial_alphabet=byte_symbols, show_progress=False,
                                  end_of_word_suffix=END_OF_WORD)
    tokenizer.train_from_iterator(list(prompts), trainer)
    merges = [tuple(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    tokens = byte_symbols + [c + END_OF_WORD for c in byte_symbols] + ["".join(m) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_vocab_files(out_dir, vocab, merges):
    """Write vocab.json and merges.txt in the formats of CLIP's (and SD's) tokenizer folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


def write_tokenizer_files(out_dir, prompts):
    """Learn the BPE vocabulary from `prompts` and write vocab.json + merges.txt."""
    return write_vocab_files(out_dir, *learn_bpe(prompts))


def export_vocab_files(tokenizer, out_dir):
    """Write a loaded tokenizer's vocabulary as vocab.json + merges.txt.

    transformers 5 saves only tokenizer.json; the two classic files let older transformers
    (slow CLIPTokenizer) load the same folder.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return write_vocab_files(out_dir, model["vocab"], merges)


def build_tokenizer(prompts, max_length=77):
    """A CLIPTokenizer whose vocabulary is learned offline from `prompts`."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp, prompts)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)


# ---------------------------------------------------------------------------
# Model components
# ---------------------------------------------------------------------------

def build_text_encoder(tokenizer, width=64, layers=2, heads=4):
    """A CLIP text transformer sized to the tokenizer (position table = model_max_length)."""
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width,
                            intermediate_size=4 * width, num_hidden_layers=layers,
                            num_attention_heads=heads, projection_dim=width,
                            max_position_embeddings=tokenizer.model_max_length,
                            pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    return CLIPTextModel(config)


def build_vae(channels=(16, 32, 64), latent_channels=4, image_size=32, layers_per_block=1,
              norm_groups=8, mid_attention=True):
    """AutoencoderKL that downsamples by 2**(len(channels)-1) (32 px -> 8x8 latents by default)."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels),
                         block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                         norm_num_groups=norm_groups, sample_size=image_size,
                         mid_block_add_attention=mid_attention)


def build_unet(channels=(32, 64, 64), sample_size=8, in_channels=4, cross_attention_dim=64,
               attention=None, layers_per_block=1, heads=4, norm_groups=16):
    """UNet2DConditionModel; `attention[i]` puts cross-attention blocks at level i (default: all).

    The middle block always cross-attends, as in SD.
    """
    attention = tuple(attention) if attention is not None else (True,) * len(channels)
    if len(attention) != len(channels):
        raise ValueError(f"attention {attention} needs one flag per UNet level {channels}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels,
                                out_channels=in_channels, down_block_types=down, up_block_types=up,
                                block_out_channels=tuple(channels),
                                layers_per_block=layers_per_block,
                                cross_attention_dim=cross_attention_dim,
                                attention_head_dim=heads, norm_num_groups=norm_groups)


def build_scheduler():
    """DDIMScheduler with SD-1.4's training schedule."""
    return DDIMScheduler(**SD_SCHEDULER)


def build_components(prompts, image_size=32, vae_channels=(16, 32, 64), latent_channels=4,
                     unet_channels=(32, 64, 64), text_width=64, text_layers=2, max_length=77,
                     unet_attention=(False, True, True), vae_norm_groups=8, unet_norm_groups=16,
                     heads=4, vae_mid_attention=True):
    """All five pipeline components (untrained), sized consistently with each other."""
    scale = 2 ** (len(vae_channels) - 1)
    if image_size % scale:
        raise ValueError(f"image_size {image_size} must be a multiple of the VAE scale {scale}")
    tokenizer = build_tokenizer(prompts, max_length)
    return dict(
        vae=build_vae(vae_channels, latent_channels, image_size, norm_groups=vae_norm_groups,
                      mid_attention=vae_mid_attention),
        text_encoder=build_text_encoder(tokenizer, text_width, text_layers, heads),
        tokenizer=tokenizer,
        unet=build_unet(unet_channels, image_size // scale, latent_channels, text_width,
                        unet_attention, heads=heads, norm_groups=unet_norm_groups),
        scheduler=build_scheduler(),
    )


def make_pipeline(components, pipeline_cls=StableDiffusionImg2ImgPipeline):
    """Wrap components in an SD pipeline class without a safety checker."""
    parts = {k: components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    return pipeline_cls(**parts, safety_checker=None, feature_extractor=None,
                        requires_safety_checker=False)


def save_pipeline(components, out_dir):
    """Save the components as an SD-style folder (model_index.json + one folder per part)."""
    make_pipeline(components).save_pretrained(out_dir)
    export_vocab_files(components["tokenizer"], Path(out_dir) / "tokenizer")
    return Path(out_dir)


def build_tiny_pipeline(out_dir, prompts, seed=0, image_size=16, vae_channels=(8, 16),
                        unet_channels=(32, 64), text_width=32, text_layers=1, max_length=16):
    """Save an untrained ~1M-parameter pipeline to `out_dir` quickly (for tests)."""
    torch.manual_seed(seed)
    components = build_components(prompts, image_size, vae_channels, 4, unet_channels,
                                  text_width, text_layers, max_length,
                                  unet_attention=(True,) * len(unet_channels), vae_norm_groups=8,
                                  unet_norm_groups=16, heads=2)
    return save_pipeline(components, out_dir)


def num_parameters(module):
    """Parameter count of one component."""
    return sum(p.numel() for p in module.parameters())
