"""One expansion shard, `run(config)`, in three phases: plan (the work list, this shard's part
of it, --verify), build (guide, prototypes, pipeline, sampler, batch size) and sample (batches,
images, manifests). The plan needs no torch: a shard with nothing left to make stops after it,
before torch or any model library loads (distdiff/generation.py holds the other two phases).
"""
import dataclasses
import logging

import yaml

from distdiff import folders, registry, shards
from distdiff.expand_flags import GENERATION_KEYS
from distdiff.runs import setup_logging

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Plan:
    """What one shard is to make: the dataset, its sources, the whole work list and this shard's
    part of it, in blocks."""
    spec: registry.DatasetSpec
    sources: folders.Listing
    items: list
    split: int
    total_split: int
    mine: list


def run(cfg):
    """Make this shard's images (distdiff.expand_flags.ExpandConfig); returns the exit status.
    Every input is checked before any heavy work, and before anything is written."""
    plan = plan_shard(cfg)
    if cfg.verify:
        return verify(plan, cfg.out)
    setup_logging()  # stdout only until the inputs are known to be good; the device line is shown
    for note in cfg.notes:
        logger.warning("%s", note)
    settings = dict(cfg.settings, class_prompts=plan.spec.class_prompts(plan.sources.classes, cfg.prompts),
                    val_split_resolved=plan.spec.val_description())  # args.yaml: what ran
    finished = (cfg.out / "args.yaml").is_file() and not shards.missing_items(plan.mine, cfg.out, plan.sources.classes)
    if cfg.prepare_only or (plan.mine and not finished):
        from distdiff import generation  # torch and the models from here on

        return generation.make(cfg, plan, settings)
    if plan.mine:  # a finished shard still refuses other settings
        shards.open_output(cfg.out, dict(settings, precision=finished_precision(cfg)), plan.split, GENERATION_KEYS)
    shards.write_shard_record(cfg.out, plan.split, plan.total_split, len(plan.mine), cfg.argv, "done")
    logger.info("shard %d/%d done: written 0, skipped %d (%s)", plan.split, plan.total_split, len(plan.mine),
                "every image present" if plan.mine else "no items in this shard")
    return 0


def plan_shard(cfg):
    """Phase 1: the dataset's sources, every item of the expansion and this shard's blocks of them."""
    split, total_split = shards.resolve_shard(cfg.split, cfg.total_split)
    spec = registry.get_dataset(cfg.dataset)
    registry.ensure_prepared(spec)
    sources = load_sources(spec)
    items = shards.work_items(sources.samples, cfg.expand_ratio, cfg.limit, cfg.first_image_index)
    mine = [it for _, block in shards.shard_blocks(shards.blocks(items), split, total_split) for it in block]
    return Plan(spec, sources, items, split, total_split, mine)


def load_sources(spec):
    """The training split's images (listed, not opened: generation.make decodes them once)."""
    return folders.list_split(spec, spec.train_split)


def finished_precision(cfg):
    """--precision as a finished shard checks it: as given, or for auto the one its args.yaml
    records (auto follows the device, which a shard with nothing to make never opens)."""
    if cfg.precision != "auto":
        return cfg.precision
    return (yaml.safe_load((cfg.out / "args.yaml").read_text()) or {}).get("precision", cfg.precision)


def verify(plan, out):
    """--verify: report missing outputs per class and the shard ids that own them; 1 if any."""
    missing, per_class, owners = shards.verify_report(plan.items, out, plan.sources.classes, plan.total_split)
    print(f"{len(plan.items) - missing}/{len(plan.items)} images present in {out}")
    if missing:
        for name, count in sorted(per_class.items()):
            print(f"  {name}: {count} missing")
        print(f"rerun shards {owners} of --total_split {plan.total_split} (same command, --split <id>)")
        return 1
    return 0
