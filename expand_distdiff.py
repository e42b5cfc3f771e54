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
import dataclasses
import logging
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

import embedded  # noqa: F401 - registers the embedded benchmark's datasets
from distdiff import DistDiffError
from distdiff import expansion as ex
from distdiff import registry
from distdiff import shards
from distdiff import expand_flags
from distdiff.config import dataset_section, parse_args, resolved_dict
from distdiff.devices import configure_cpu, peak_memory_line, pipeline_dtype, resolve_device, resolve_precision
from distdiff.guidance import GuidanceConfig
from distdiff.options import run_cli
from distdiff.pipeline import load_pipeline, resolve_model, speed_up
from distdiff.presets import apply_targets, preset_values
from distdiff.runs import default_guide_ckpt, expansion_dir, setup_logging
from distdiff.sampler import SampleConfig

logger = logging.getLogger("distdiff.expand")


def resolve_paths(args):
    """Fill in the default guide checkpoint, experiment name, output dir and prototypes path."""
    if args.guide_ckpt is None:
        # With a preset, the preset's guide (train_original.py --preset), in its own run dir.
        args.guide_ckpt = str(default_guide_ckpt(args.checkpoint_root, args.dataset, args.guide_arch, preset=args.preset))
    if args.exp is None:
        name = {"transform": "distdiff", "none": "sd"}.get(args.guidance, args.guidance)
        args.exp = f"{name}_x{args.expand_ratio}"
    if args.out is None:
        args.out = str(expansion_dir(args.checkpoint_root, args.dataset, args.exp))
    if args.prototypes is None:
        args.prototypes = str(Path(args.out) / "prototypes.npz")
    return args


def guidance_config(args):
    """GuidanceConfig from the flags (its fields are flag names, or GUIDANCE_FLAGS' names)."""
    fields = {f.name: getattr(args, expand_flags.GUIDANCE_FLAGS.get(f.name, f.name))
              for f in dataclasses.fields(GuidanceConfig)}
    fields["lambda_class"], fields["lambda_group"] = apply_targets(args.optimize_targets, args.lambda_class,
                                                                   args.lambda_group)
    return GuidanceConfig(**fields)


def sample_config(args):
    """SampleConfig from the flags (its fields are flag names)."""
    return SampleConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)})


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
    setup_logging()  # stdout only until the inputs are known to be good; the device line is shown
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
    ex.check_or_write_args(out, resolved_dict(args), expand_flags.GENERATION_KEYS)
    setup_logging(out, filename="log.txt" if args.split == 0 else f"log_shard{args.split}.txt")
    mine = [it for _, block in shards.shard_blocks(shards.blocks(items), args.split, args.total_split) for it in block]
    argv = sys.argv[1:] if argv is None else argv  # recorded, so a missing shard's command can be given
    if not args.prepare_only and not shards.missing_items(mine, out, sources.classes):
        shards.write_shard_record(out, args.split, args.total_split, len(mine), argv, "done")
        logger.info("shard %d/%d done: written 0, skipped %d (every image present)", args.split, args.total_split,
                    len(mine))
        return 0
    set_seed(args.seed)
    protos = ex.build_prototypes(args.prototypes, spec, sources, guide, meta, device, args.guide_ckpt,
                                 args.cluster, args.num_groups, args.seed, args.guide_input)
    if args.prepare_only:
        print(f"prototypes ready at {args.prototypes}")
        return 0
    pipe = load_pipeline(model_dir, device, dtype, torch.float32 if args.encode_precision == "fp32" else None)
    if args.guide_precision == "pipeline":  # after the prototypes, which stay fp32
        guide.to(dtype)
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
    shards.write_shard_record(out, args.split, args.total_split, len(mine), argv, "running")
    counters = ex.run_batches(sampler, sources, shards.shard_batches(items, args.split, args.total_split, batch), out,
                              out / f"manifest_shard{args.split}.jsonl", args.seed, args.guidance_repeats,
                              ex.BatchSize(batch), desc=f"expand shard {args.split}/{args.total_split}",
                              energy_every=args.record_energy, allow_unguided=args.allow_unguided)
    shards.write_shard_record(out, args.split, args.total_split, len(mine), argv, "done",
                              **{k: v for k, v in counters.items() if k not in ("before", "after")})
    logger.info("shard %d/%d done: %s%s", args.split, args.total_split, ex.summary_line(counters),
                peak_memory_line(device))
    return 0


def get_parser():
    """The flags (distdiff/expand_flags.py, where each carries its role)."""
    return expand_flags.get_parser(__doc__)


if __name__ == "__main__":
    run_cli(main)
