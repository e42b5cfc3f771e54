"""Stages 2-3: hierarchical prototypes, then prototype-guided Stable Diffusion img2img.

    # embedded demo (digits, the tiny prior from scripts/train_prior.py)
    python expand_distdiff.py --dataset digits --expand_ratio 5
    # paper setting: SD-1.4, one of 4 shards (the seed README's launcher does this per GPU)
    python expand_distdiff.py --dataset caltech-101 --model CompVis/stable-diffusion-v1-4 \
        --guide_ckpt checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1/model_best.pth.tar \
        --expand_ratio 5 --split 0 --total_split 4 --device cuda --precision fp16
    python expand_distdiff.py --dataset digits --verify     # what is missing, which shards to rerun

Writes <out>/<class>/<stem>_expand_<k>.png (an ImageFolder), prototypes.npz, args.yaml,
log.txt and manifest_shard<i>.jsonl. Without --split/--total_split the shard comes from
RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT. Rerunning resumes; every image
depends only on (seed, source, copy), never on the shard count or a resume point.
"""
import argparse
import logging
from pathlib import Path

import embedded  # noqa: F401 - registers the embedded benchmark's datasets
from distdiff import DistDiffError
from distdiff import expansion as ex
from distdiff import registry
from distdiff import shards
from distdiff.config import dataset_section, parse_args, resolved_dict, str2bool
from distdiff.devices import (configure_cpu, peak_memory_line, pipeline_dtype, resolve_device, resolve_precision,
                              seed_everything)
from distdiff.features import GUIDE_INPUTS
from distdiff.guidance import GUIDANCE_MODES, GuidanceConfig
from distdiff.options import add_runtime_flags, run_cli
from distdiff.pipeline import load_pipeline, resolve_model, speed_up
from distdiff.presets import PRESETS, apply_targets, preset_values
from distdiff.prototypes import CLUSTER_METHODS
from distdiff.registry import PROMPT_SETS
from distdiff.runs import default_guide_ckpt, expansion_dir, setup_logging
from distdiff.sampler import FRAMINGS, START_RULES, SampleConfig

logger = logging.getLogger("distdiff.expand")


def resolve_paths(args):
    """Fill in the default guide checkpoint, experiment name, output dir and prototypes path."""
    if args.guide_ckpt is None:
        args.guide_ckpt = str(default_guide_ckpt(args.checkpoint_root, args.dataset, args.guide_arch))
    if args.exp is None:
        name = {"transform": "distdiff", "none": "sd"}.get(args.guidance, args.guidance)
        args.exp = f"{name}_x{args.expand_ratio}"
    if args.out is None:
        args.out = str(expansion_dir(args.checkpoint_root, args.dataset, args.exp))
    if args.prototypes is None:
        args.prototypes = str(Path(args.out) / "prototypes.npz")
    return args


def guidance_config(args):
    """GuidanceConfig from the flags."""
    lambda_class, lambda_group = apply_targets(args.optimize_targets, args.lambda_class, args.lambda_group)
    return GuidanceConfig(mode=args.guidance, guidance_step=args.guidance_step,
                          lookahead_steps=args.lookahead_steps, step_size=args.step_size,
                          radius=args.radius, lambda_class=lambda_class, lambda_group=lambda_group,
                          normalize_features=args.normalize_features,
                          renormalize_prototypes=args.renormalize_prototypes,
                          repeats=args.guidance_repeats, interval=args.guidance_interval)


def sample_config(args):
    """SampleConfig from the flags."""
    return SampleConfig(args.num_steps, args.strength, args.cfg_scale, args.resolution, args.framing,
                        args.start_rule, args.shared_posterior, args.offset_noise)


def parse(argv=None):
    """The resolved settings: defaults < configs/<dataset>.yaml (expand) < --preset < command line."""
    args = parse_args(get_parser(), argv, config=dataset_section("expand"),
                      overlay=lambda s: preset_values(s.preset, s.guidance))
    if not args.dataset:
        raise DistDiffError("a dataset is required (--dataset)")
    if args.language_enhance and args.prompt_file is None:
        args.prompt_file = str(registry.DATA_ROOT / f"{args.dataset}_le.json")
    return resolve_paths(args)


def verify(args, sources, items):
    """Report missing outputs per class and the shard ids that own them; exit 1 if any."""
    missing, per_class, owners = shards.verify_report(items, args.out, sources.classes, args.total_split)
    print(f"{len(items) - missing}/{len(items)} images present in {args.out}")
    if missing:
        for name, count in sorted(per_class.items()):
            print(f"  {name}: {count} missing")
        print(f"rerun shards {owners} of --total_split {args.total_split} (same command, --split <id>)")
        return 1
    return 0


def main(argv=None):
    args = parse(argv)
    # Every input is checked before any heavy work, and before anything is written.
    args.split, args.total_split = shards.resolve_shard(args.split, args.total_split)
    spec = registry.get_dataset(args.dataset)
    registry.ensure_prepared(spec)
    sources = ex.load_sources(spec)
    items = shards.work_items(sources.samples, args.expand_ratio, args.limit, args.first_image_index)
    if args.verify:
        return verify(args, sources, items)
    device = resolve_device(args.device, args.gpu)
    dtype = pipeline_dtype(args.precision, device)
    args.precision = resolve_precision(args.precision, device)  # args.yaml records what ran
    configure_cpu(args.threads)
    guidance, sample_cfg = guidance_config(args), sample_config(args)
    sample_cfg.check_guidance(guidance)
    prompts = ex.class_prompts(spec, sources.classes, args.prompts, args.prompt_file if args.language_enhance else None)
    guide, guide_input, meta = ex.load_guide(args.guide_ckpt, len(sources.classes), device, args.guide_input)
    model_dir = resolve_model(args.model)
    out = Path(args.out)
    ex.check_or_write_args(out, resolved_dict(args))
    setup_logging(out, filename="log.txt" if args.split == 0 else f"log_shard{args.split}.txt")
    mine = [it for _, block in shards.shard_blocks(shards.blocks(items), args.split, args.total_split) for it in block]
    if not args.prepare_only and not shards.missing_items(mine, out, sources.classes):
        logger.info("shard %d/%d done: written 0, skipped %d (every image present)", args.split, args.total_split,
                    len(mine))
        return 0
    seed_everything(args.seed)
    protos = ex.build_prototypes(args.prototypes, spec, sources, guide, meta, device, args.guide_ckpt,
                                 args.cluster, args.num_groups, args.seed, args.guide_input)
    if args.prepare_only:
        print(f"prototypes ready at {args.prototypes}")
        return 0
    pipe = load_pipeline(model_dir, device, dtype)
    sampler = ex.build_sampler(pipe, guide, guide_input, protos, prompts, sample_cfg, guidance, device)
    batch, checkpointing = ex.choose_batch_size(args.batch_size, pipe, guide, meta["image_size"], sampler.resolution,
                                                guidance.mode != "none", device, args.gradient_checkpointing,
                                                guidance.lookahead_steps)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()
    speed_up(pipe, args.channels_last, args.compile)
    logger.info("shard %d/%d on %s, %s, batch %d%s", args.split, args.total_split, device, args.precision, batch,
                ", gradient checkpointing" if checkpointing else "")
    counters = ex.run_batches(sampler, sources, shards.shard_batches(items, args.split, args.total_split, batch), out,
                              out / f"manifest_shard{args.split}.jsonl", args.seed, args.guidance_repeats,
                              ex.BatchSize(batch), desc=f"expand shard {args.split}/{args.total_split}",
                              energy_every=args.record_energy, allow_unguided=args.allow_unguided)
    logger.info("shard %d/%d done: %s%s", args.split, args.total_split, ex.summary_line(counters),
                peak_memory_line(device))
    return 0


def radius_type(value):
    """A float, or 'none' for no L-inf projection."""
    return None if str(value).lower() == "none" else float(value)


def energy_every(value):
    """--record_energy: measure on every N-th block (1: all, 0: none); True/False mean 1/0."""
    text = str(value).strip().lower()
    return {"true": 1, "false": 0}.get(text) if text in ("true", "false") else int(text)


def batch_type(value):
    """--batch_size: a positive integer, or auto."""
    if str(value).lower() == "auto":
        return "auto"
    if not str(value).isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}")
    return int(value)


def guidance_type(value):
    """transform | direct | none, also in the authors' spelling (transform_guidance, direct_guidance)."""
    return {"transform_guidance": "transform", "direct_guidance": "direct"}.get(value, value)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    # Where a flag has a second spelling in the authors' generate_data.py, it is accepted too and
    # means the same (the authors' expand_diff.sh argument list runs unchanged).
    # data, models, outputs
    add("--dataset", "-d", default=None, help=f"one of {', '.join(registry.dataset_names())}")
    add("--model", "--pretrained_model_name_or_path", default="CompVis/stable-diffusion-v1-4",
        help="Hugging Face Hub id (from the cache when offline) or local diffusers folder")
    add("--guide_ckpt", "--guide-ckpt", "--encoder_weight_path", default=None,
        help="guide classifier (default: checkpoint/<dataset>/<guide_arch>_unpretrained_lr0.1/seed1/model_best.pth.tar)")
    add("--guide_arch", "--guide-arch", "-a", default="resnet50", help="arch of the default guide checkpoint path")
    add("--checkpoint_root", "--checkpoint-root", default="checkpoint", help="root for default paths")
    add("--exp", default=None, help="experiment name (default: distdiff_x<R>, sd_x<R> for --guidance none)")
    add("--out", "--output_dir", default=None, help="output dir (default: checkpoint/<dataset>/expansions/<exp>)")
    add("--prototypes", default=None, help="prototypes file (default: <out>/prototypes.npz)")
    add("--expand_ratio", "--expand-ratio", "--num_images_per_prompt", type=int, default=5,
        help="new images per source image")
    add("--first_image_index", type=int, default=0,
        help="make copies k >= this only (the authors' manual resume; reruns resume by themselves here)")
    add("--limit", type=int, default=None, help="expand only n source images (class-interleaved)")
    # img2img
    add("--num_steps", "--num-steps", type=int, default=50, help="DDIM steps")
    add("--strength", type=float, default=0.5, help="img2img strength (denoising starts at step T*(1-s))")
    add("--cfg_scale", "--cfg-scale", "--guidance_scale", type=float, default=7.5,
        help="classifier-free guidance scale")
    add("--resolution", type=int, default=None, help="sampling size (default: the model's native size)")
    add("--framing", default="center", choices=FRAMINGS,
        help="source image to a square: shorter side + centre crop (default), + a random crop seeded per "
             "source (authors), or squash the whole image")
    add("--shared_posterior", "--shared-posterior", type=str2bool, default=False,
        help="one VAE posterior sample per source shared by its copies (authors), not one per copy")
    add("--start_rule", default="diffusers", choices=START_RULES,
        help="first denoised step: T - int(T*s) (diffusers img2img) or int((1-s)*T) (authors); equal at s=0.5")
    add("--offset_noise", type=str2bool, nargs="?", const=True, default=False,
        help="the authors' --offset_noise: add 0.1 N(0, 1) per item and latent channel to the img2img noise")
    add("--prompts", default="project", choices=PROMPT_SETS,
        help="prompt templates: the project's (README) or the authors' (a full stop; '{} texture.' for DTD)")
    add("--language_enhance", "-le", action="store_true",
        help="several prompts per class from --prompt_file, one drawn per image with the item's generator")
    add("--prompt_file", default=None,
        help="JSON/YAML {class: [sentences]} for --language_enhance (default: data/<dataset>_le.json)")
    # distribution-aware guidance
    add("--guidance", "--guidance_type", default="transform", type=guidance_type, choices=GUIDANCE_MODES,
        help="transform | direct (the authors' variants) | none (plain SD img2img)")
    add("--guidance_step", "--guidance-step", type=int, default=20, help="M: guidance starts at timesteps[T-M]")
    add("--lookahead_steps", "--lookahead-steps", "--guidance_period", type=int, default=2,
        help="P: look-ahead DDIM steps (transform) or guided steps (direct)")
    add("--step_size", "--step-size", "--rho", type=float, default=10.0, help="rho: gradient step size")
    add("--radius", "--constraint_value", type=radius_type, default=0.2,
        help="transform: L-inf projection radius, or 'none'")
    add("--lambda_class", "--lambda-class", "--gs", type=float, default=1.0, help="weight of the class prototype term")
    add("--lambda_group", "--lambda-group", "--ls", type=float, default=1.0, help="weight of the group prototype term")
    add("--optimize_targets", default=None,
        help="the authors' term switch: global_prototype (class), local_prototype (group) or both joined "
             "by '-'; a term it leaves out gets weight 0")
    add("--normalize_features", "--normalize-features", type=str2bool, default=True,
        help="L2-normalise guide features before the energy")
    add("--renormalize_prototypes", "--renormalize-prototypes", type=str2bool, default=True,
        help="rescale class and group prototypes (means of unit features) to unit norm, as the authors do")
    add("--guide_input", "--guide-input", default="guide", choices=GUIDE_INPUTS,
        help="decoded image to guide input: the guide's own test transform, or the authors' raw bicubic resize "
             "(and their squash for the prototype features)")
    add("--guidance_repeats", "--guidance-repeats", type=int, default=1, help="transform: number of applications")
    add("--guidance_interval", "--guidance-interval", type=int, default=1, help="transform: steps between applications")
    add("--record_energy", "--record-energy", type=energy_every, default=8, metavar="N",
        help="measure the energy with and without guidance on every N-th block (1: all, 0 or False: none); the "
             "measurement repeats the look-ahead twice without gradients, so doing it on every block nearly "
             "doubles the guidance's cost; it never changes an image")
    add("--cluster", default="kmeans", choices=CLUSTER_METHODS, help="group prototype clustering")
    add("--num_groups", "--num-groups", "--K", type=int, default=3, help="K group prototypes per class")
    add("--preset", default=None, choices=sorted(PRESETS),
        help="set a group of flags at once (flags on the command line still win): authors = the authors' "
             "algorithm, see README")
    # execution
    add("--split", "--shard_id", "--shard-id", type=int, default=None, help="this shard's id")
    add("--total_split", "--num_shards", "--num-shards", type=int, default=None, help="number of shards")
    add("--batch_size", "--batch-size", "--train_batch_size", type=batch_type, default="auto",
        help="items sampled together: a number, or auto (CUDA: the largest batch that fits the free memory by the "
             "per-image model of distdiff/memory.py, with gradient checkpointing only where one image does not fit "
             "without it; CPU: 8). An out-of-memory error halves it and retries; it never locks an output dir")
    add("--gpu", default=None, help="GPU index (the authors' launcher argument)")
    add("--gradient_checkpointing", "--gradient-checkpointing", action="store_true",
        help="recompute UNet and VAE-decoder activations in the guidance backward instead of storing them: "
             "less memory, more time (diffusers checkpoints whenever gradients are on)")
    add("--channels_last", "--channels-last", type=str2bool, default=False,
        help="NHWC memory format for the UNet and VAE (see docs/performance.md)")
    add("--compile", type=str2bool, default=False,
        help="torch.compile the UNet and VAE decoder (CUDA; compile time dominates short CPU runs)")
    add("--allow_unguided", "--allow-unguided", action="store_true",
        help="keep going when guidance is lost (non-finite or all-zero gradients) for more than 1 %% of a batch's "
             "items; such items are kept unguided and marked in the manifest. Without it the run stops")
    add("--prepare_only", "--prepare-only", action="store_true", help="build prototypes, then exit")
    add("--verify", action="store_true", help="report missing images and the shards to rerun")
    add_runtime_flags(p, seed=42, seed_help="base seed; item (i, k) uses a generator seeded by (seed, i, k)",
                      precision_help="pipeline dtype: auto = fp16 on CUDA (the authors' choice), fp32 on the CPU; "
                                     "the guidance's own variables and update are fp32 and its backward is loss-scaled",
                      precision_default="auto")
    return p


if __name__ == "__main__":
    run_cli(main)
