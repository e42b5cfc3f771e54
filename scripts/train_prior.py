"""Train the embedded diffusion prior: a small Stable-Diffusion-shaped latent diffusion model.

    python scripts/train_prior.py       # -> checkpoint/prior/digits (~7 min on 2 CPU cores)
    python scripts/train_prior.py --steps 20 --vae_steps 20 --batch_size 8 --out /tmp/prior

SD-1.4 cannot run on this machine, so the prior is the same architecture family at toy size,
trained offline on the digits `prior` split only (never train/val/test): AutoencoderKL,
UNet2DConditionModel with cross-attention, DDIMScheduler with SD's 1000-step scaled-linear
schedule (epsilon prediction), CLIPTextModel + CLIPTokenizer (vocabulary learned from the
prompts). The result is saved with `StableDiffusionImg2ImgPipeline.save_pretrained`, so later
stages load it with the same `from_pretrained` call as SD-1.4. The recipe is in
embedded/prior_training.py; the defaults, each with its reason, in configs/prior.yaml.

The text encoder is trained jointly with the UNet instead of frozen as in SD. SD freezes a CLIP
that was pretrained on captions; there is none here, and a frozen random encoder leaves the UNet
to untangle fixed random prompt embeddings on its own: with it frozen, the same 600-step run reached
26 % text-to-image class accuracy, against 100 % trained jointly.

A training state is saved atomically in <out>/<name>.work/ every --ckpt_every steps; rerunning
the same command resumes from it. The final folder is written to a temp dir and renamed, so
<out>/<name> is either absent or complete; when it exists, a rerun reports that and exits.
Two runs with the same seed and thread count give bit-identical weights.
At the end, embedded/prior_eval.py's protocol writes quality.json into the folder.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
import logging
import time
from dataclasses import fields
from pathlib import Path

import torch
from accelerate.utils import set_seed

from distdiff import DistDiffError
from distdiff.config import REPO_ROOT, load_yaml_config, parse_args, save_args
from distdiff.devices import configure_cpu, resolve_device
from distdiff.domains import COUNT, DEGREES, INDEX, NON_NEGATIVE, RATE, Number, OneLineParser, with_domain
from distdiff.fileio import atomic_torch_save
from distdiff.options import add_runtime_flags, run_cli
from distdiff.registry import ensure_prepared, get_dataset
from distdiff.runs import setup_logging
from embedded.mixture import PRIOR_ROOT, load_mixture, parse_mixture, prior_name
from embedded.prior import build_components, num_parameters
from embedded.prior_eval import EvalProtocol, load_images
from embedded.prior_training import (PriorRecipe, encode_latents, finalize, latent_scale, load_state, prompt_ids,
                                     state_saver, train_unet, train_vae)

logger = logging.getLogger("distdiff.train_prior")
# Settings that shape the weights or the cached latents: a resumed state must share them.
SHAPE_KEYS = ("dataset", "image_size", "vae_channels", "unet_channels", "unet_attention",
              "text_width", "text_layers", "seed", "vae_steps", "latent_copies", "prior_data")


def check(args):
    """Settings that cannot work, before anything is built."""
    scale = 2 ** (len(args.vae_channels) - 1)
    if len(args.vae_channels) < 2 or args.image_size % scale:
        raise DistDiffError(f"--image_size {args.image_size} must be a multiple of the VAE scale {scale} "
                            "(and --vae_channels needs at least 2 levels)")
    if len(args.unet_attention) != len(args.unet_channels):
        raise DistDiffError("--unet_attention needs one 0/1 per --unet_channels level")


def main(argv=None):
    parser = get_parser()
    args = parse_args(parser, argv, config=lambda s: (load_yaml_config(s.config), s.config))
    check(args)
    components = parse_mixture(args.prior_data) if args.prior_data else None
    name = args.name or prior_name(args.dataset, args.prior_data)
    final, work = Path(args.out) / name, Path(args.out) / f"{name}.work"
    if final.is_dir():
        print(f"{final} is complete; delete it to retrain")
        return 0
    spec = get_dataset(args.dataset)
    device = resolve_device(args.device)
    setup_logging(work)
    save_args(work, args)
    start = time.time()
    configure_cpu(args.threads)
    set_seed(args.seed)
    ensure_prepared(spec)
    recipe = PriorRecipe(**{f.name: getattr(args, f.name) for f in fields(PriorRecipe)})
    # The diffusion prior may only ever see `prior` splits: the target's, or a mixture of the same size.
    images, labels, classes = load_images(spec, "prior", args.image_size)
    if components:
        images, labels = load_mixture(components, classes, len(images), args.image_size, args.seed, load_images)
        logger.info("prior data: %s", ", ".join(f"{c.dataset}:{c.split} {c.fraction:g}" for c in components))
    prompts = spec.class_prompts(classes)
    parts = build_components(prompts, args.image_size, tuple(args.vae_channels),
                             unet_channels=tuple(args.unet_channels), text_width=args.text_width,
                             text_layers=args.text_layers,
                             unet_attention=tuple(bool(a) for a in args.unet_attention))
    for key in ("vae", "unet", "text_encoder"):
        parts[key].to(device)
    logger.info("%d prior images, %d classes; params: vae %.2fM, unet %.2fM, text %.2fM", len(images),
                len(classes), *(num_parameters(parts[k]) / 1e6 for k in ("vae", "unet", "text_encoder")))
    state_path = work / "state.pt"
    state = load_state(state_path, parts, args.seed, {k: getattr(args, k) for k in SHAPE_KEYS})
    save = state_saver(state_path, parts)

    t0 = time.time()
    if state["vae_step"] < recipe.vae_steps:
        train_vae(parts["vae"], images, state, recipe, device, save)
        save(state)
    parts["vae"].eval()
    vae_seconds = time.time() - t0

    t0 = time.time()
    latent_path = work / "latents.pt"
    if latent_path.is_file():
        cache = torch.load(latent_path, weights_only=True)
    else:
        means, stds = encode_latents(parts["vae"], images, recipe.latent_copies, recipe, state["gen"], device)
        cache = {"means": means, "stds": stds, "scaling_factor": latent_scale(means, stds, state["gen"])}
        atomic_torch_save(cache, latent_path)
        save(state)  # the generator advanced: keep a resume identical to an uninterrupted run
    state["scaling_factor"] = cache["scaling_factor"]
    parts["vae"].register_to_config(scaling_factor=cache["scaling_factor"])
    logger.info("latent cache %s, scaling_factor %.4f", tuple(cache["means"].shape), cache["scaling_factor"])

    if state["unet_step"] < recipe.steps:
        train_unet(parts, (cache["means"], cache["stds"]), labels.repeat(recipe.latent_copies),
                   prompt_ids(parts["tokenizer"], prompts), state, recipe, device, save)
        save(state)
    unet_seconds = time.time() - t0

    t0 = time.time()
    for key in ("vae", "unet", "text_encoder"):
        parts[key].to("cpu")
    protocol = EvalProtocol(per_class=args.eval_per_class, seed=args.seed) if args.eval_per_class > 0 else None
    finalize(parts, final, spec, work / "evaluator.pt", device, protocol)
    logger.info("timing: vae %.0f s, unet %.0f s (incl. latent cache), save+eval %.0f s, total %.0f s",
                vae_seconds, unet_seconds, time.time() - t0, time.time() - start)
    print(f"-> {final}")
    return 0


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(*names, **kwargs):
        return parser.add_argument(*names, **with_domain(kwargs))
    add("--config", default=str(REPO_ROOT / "configs" / "prior.yaml"), help="YAML file with defaults for the flags below")
    add("--dataset", default="digits", help="the target: its `prior` split is the training data, its prompts "
        "and its evaluation are the prior's")
    add("--prior_data", default=None, metavar="MIX",
        help="train on a mixture of the same size instead, e.g. digits:prior=0.1,printed:prior=0.9 "
        "(fractions sum to 1; embedded/mixture.py)")
    add("--name", default=None, help="output folder name (default: the dataset, or <dataset>_mix_<parts>)")
    add("--out", default=str(REPO_ROOT / PRIOR_ROOT), help="root of <name>/ and <name>.work/")
    add("--image_size", type=COUNT, default=32, help="training image side")
    add("--vae_channels", type=COUNT, nargs="+", default=[16, 32, 64], help="AutoencoderKL block widths (scale 2**(n-1))")
    add("--unet_channels", type=COUNT, nargs="+", default=[32, 64, 64], help="UNet block widths")
    add("--unet_attention", type=Number(int, 0, 1), nargs="+", default=[0, 1, 1],
        help="1/0 per UNet level: cross-attention blocks there, or plain ResNet blocks")
    add("--text_width", type=COUNT, default=64, help="text encoder width = cross-attention dim")
    add("--text_layers", type=COUNT, default=2, help="text encoder layers")
    add("--vae_steps", type=COUNT, default=200, help="VAE optimisation steps")
    add("--vae_batch_size", type=COUNT, default=32, help="VAE batch size")
    add("--vae_lr", type=RATE, default=2e-3, help="VAE peak learning rate")
    add("--kl_weight", type=NON_NEGATIVE, default=1e-4, help="weight of the per-pixel KL term")
    add("--latent_copies", type=COUNT, default=8, help="augmented copies of the prior split in the latent cache")
    add("--steps", type=COUNT, default=700, help="UNet optimisation steps")
    add("--batch_size", type=COUNT, default=64, help="UNet batch size")
    add("--lr", type=RATE, default=3e-3, help="UNet + text encoder peak learning rate")
    add("--warmup", type=INDEX, default=50, help="UNet warm-up steps")
    add("--snr_gamma", type=NON_NEGATIVE, default=5.0, help="Min-SNR loss weighting cap (0: plain epsilon MSE)")
    add("--uncond_prob", type=Number(float, 0, 1), default=0.1, help="fraction of empty prompts (classifier-free guidance)")
    add("--max_shift", type=NON_NEGATIVE, default=2.0, help="augmentation: max shift in px")
    add("--max_degrees", type=DEGREES, default=10.0, help="augmentation: max rotation")
    add("--eval_per_class", type=INDEX, default=20,
        help="text-to-image samples per class in the final quality check (0: skip it)")
    add("--ckpt_every", type=COUNT, default=100, help="save the training state every N steps")
    add("--log_every", type=COUNT, default=50, help="log the loss every N steps")
    add_runtime_flags(parser, seed=0, seed_help="seed of weights, batches and noise")
    return parser


if __name__ == "__main__":
    run_cli(main)
