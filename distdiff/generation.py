"""Phases 2 and 3 of an expansion shard (distdiff.expansion.run plans it): build the guide,
the prototypes, the pipeline, the sampler and the batch size; then sample the shard's batches,
writing images and manifests. Everything here loads torch and the models.
"""
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff import shards
from distdiff.devices import (configure_cpu, peak_memory_line, pipeline_dtype, ranks_on_device, resolve_device,
                              resolve_precision)
from distdiff.engine import load_classifier
from distdiff.expand_flags import GENERATION_KEYS
from distdiff.features import GuideInput, extract_features, prototype_transform
from distdiff.fileio import atomic_save_image, remove_stale_temps
from distdiff.numerics import finite_rows
from distdiff.prototype_store import fingerprint, prepare_prototypes
from distdiff.prototypes import compute_prototypes
from distdiff.sampler import CROP_STREAM, GuidedSampler, draw_items, item_generator
from distdiff.settings import GUIDANCE_STATUS, GUIDED, LOST, NONFINITE

logger = logging.getLogger(__name__)


def make(cfg, plan, settings):
    """Build, then sample this shard's missing items (plan: distdiff.expansion.Plan; settings: what
    args.yaml records, less the precision, which the device resolves here); returns the exit status.
    The sources are decoded once first, so a corrupt file fails before any model loads."""
    device = resolve_device(cfg.device, cfg.gpu)
    settings = dict(settings, precision=resolve_precision(cfg.precision, device))
    configure_cpu(cfg.threads)
    ds.check_images(plan.sources)
    sampler, batch = build(cfg, plan, device, settings)
    if sampler is None:  # --prepare_only
        print(f"prototypes ready at {cfg.prototypes.path}")
        return 0
    state = (plan.split, plan.total_split, len(plan.mine), cfg.argv)
    shards.write_shard_record(cfg.out, *state, "running")
    counters = run_batches(sampler, plan.sources, shards.shard_batches(plan.items, plan.split, plan.total_split, batch),
                           cfg.out, cfg.out / f"manifest_shard{plan.split}.jsonl", cfg.seed, cfg.guidance.repeats,
                           BatchSize(batch), desc=f"expand shard {plan.split}/{plan.total_split}",
                           energy_every=cfg.record_energy, allow_unguided=cfg.allow_unguided)
    shards.write_shard_record(cfg.out, *state, "done", **{k: v for k, v in counters.items() if k not in ("before", "after")})
    logger.info("shard %d/%d done: %s%s", plan.split, plan.total_split, summary_line(counters),
                peak_memory_line(device))
    return 0


def build(cfg, plan, device, settings):
    """Phase 2: the guide, the prototypes, the pipeline, the sampler and the batch size; the
    output dir's args.yaml and log once the inputs are known to be good. (None, None) with
    --prepare_only, once the prototypes are written."""
    from accelerate.utils import set_seed

    from distdiff.pipeline import load_pipeline, resolve_model, speed_up

    dtype = pipeline_dtype(cfg.precision, device)
    prompts = class_prompts(plan.spec, plan.sources.classes, cfg.prompts, cfg.prompt_file)
    guide, guide_input, meta = load_guide(cfg.guide_ckpt, len(plan.sources.classes), device, cfg.guide_input)
    model_dir = resolve_model(cfg.model)
    shards.open_output(cfg.out, settings, plan.split, GENERATION_KEYS)
    set_seed(cfg.seed)
    protos = build_prototypes(cfg.prototypes.path, plan.spec, plan.sources, guide, meta, device, cfg.guide_ckpt,
                              cfg.prototypes.cluster, cfg.prototypes.num_groups, cfg.seed, cfg.guide_input)
    if cfg.prepare_only:
        return None, None
    pipe = load_pipeline(model_dir, device, dtype, torch.float32 if cfg.encode_precision == "fp32" else None)
    if cfg.guide_precision == "pipeline":  # after the prototypes, which stay fp32
        guide.to(dtype)
    sampler = build_sampler(pipe, guide, guide_input, protos, prompts, cfg.sample, cfg.guidance, device)
    batch, checkpointing = choose_batch_size(cfg.batch_size, pipe, guide, meta["image_size"], sampler.resolution,
                                             cfg.guidance.mode != "none", device, cfg.gradient_checkpointing,
                                             cfg.guidance.lookahead_steps)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()
    speed_up(pipe, cfg.channels_last, cfg.compile)
    logger.info("shard %d/%d on %s, %s, batch %d%s", plan.split, plan.total_split, device, settings["precision"],
                batch, ", gradient checkpointing" if checkpointing else "")
    return sampler, batch


def build_prototypes(path, spec, sources, guide, meta, device, guide_ckpt, cluster, num_groups, seed=0,
                     guide_input="guide"):
    """Load or compute the prototypes file at `path` for this guide, split, cluster method, K and
    feature transform (the guide's test transform, or the authors' squash)."""
    root = spec.split_dir(spec.train_split)
    files = [str(Path(p).relative_to(root)) for p, _ in sources.samples]
    fprint = fingerprint(guide_ckpt, files, cluster, num_groups, guide_input)

    def compute():
        transform = prototype_transform(meta, guide_input)
        dataset = ds.as_image_folder(sources, transform, verify=False)  # the plan's listing, not a new one
        features, labels = extract_features(guide, dataset, device)
        class_p, group_p, mask = compute_prototypes(features.numpy(), labels.numpy(), len(sources.classes),
                                                    num_groups, cluster, seed)
        return {"class_protos": class_p, "group_protos": group_p, "group_mask": mask,
                "class_names": sources.classes}

    protos = prepare_prototypes(path, fprint, compute, seed if cluster == "kmeans" else None)
    ds.check_same_classes(sources.classes, protos["class_names"], f"prototypes {path}")
    return protos


def load_guide(guide_ckpt, num_classes, device, guide_input="guide"):
    """The frozen guide classifier, its input mapping and its checkpoint meta."""
    guide, meta = load_classifier(guide_ckpt, device, num_classes=num_classes)
    guide.requires_grad_(False)
    return guide, GuideInput(meta, guide_input).to(device), meta


class SourceLatents:
    """VAE posteriors of the sources, computed once, in fixed blocks of source indices (so the
    encoder batch, and so the bytes, never depend on the shard)."""

    BLOCK = 8

    def __init__(self, sampler, sources, seed=0):
        self.sampler, self.sources, self.seed, self.cache = sampler, sources, seed, {}

    def get(self, index):
        """(mean, std) latents of one source."""
        block = index // self.BLOCK
        if block not in self.cache:
            ids = range(block * self.BLOCK, min((block + 1) * self.BLOCK, len(self.sources)))
            crops = [item_generator(self.seed, i, CROP_STREAM) for i in ids]  # framing="random"
            mean, std = self.sampler.encode_sources([self.sources[i][0] for i in ids], crops)
            self.cache[block] = {i: (mean[j], std[j]) for j, i in enumerate(ids)}
        return self.cache[block][index]


class BatchSize:
    """The sampling batch size of a run. An out-of-memory error halves it for the rest of the run
    and the batch is retried in pieces; items are independent, so the images stay the same up to
    float rounding. (accelerate's `find_executable_batch_size` empties the CUDA cache before every
    call, which would slow every batch; its out-of-memory test and cache clearing are used here.)"""

    def __init__(self, size):
        self.size = size

    def run(self, fn, items):
        """[fn(piece) for the pieces of `items`], halving the piece size on out-of-memory errors."""
        from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

        while True:
            try:
                return [fn(items[s:s + self.size]) for s in range(0, len(items), self.size)]
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled
                if not should_reduce_batch_size(err):
                    raise
                if self.size == 1:
                    raise DistDiffError("out of memory at batch size 1; free the GPU, or pass "
                                        "--gradient_checkpointing (and --batch_size auto)") from None
            # Outside the except block: the error's traceback (and the tensors its frames hold) is gone.
            clear_device_cache(garbage_collection=True)
            self.size //= 2
            logger.warning("out of memory: batch size halved to %d for the rest of this run", self.size)


CPU_BATCH = shards.BLOCK_ITEMS  # --batch_size auto on the CPU: throughput is flat beyond it


def choose_batch_size(batch_size, pipe, guide, guide_side, resolution, guided, device, checkpointing,
                      lookahead_steps):
    """(batch size, gradient checkpointing) for --batch_size (an int, or 'auto').

    auto on CUDA: the largest batch that fits the free memory by the per-image model of
    distdiff.memory, with checkpointing only where one image does not fit without it."""
    if batch_size != "auto":
        return int(batch_size), checkpointing
    if device.type != "cuda":
        return CPU_BATCH, checkpointing
    from distdiff.memory import GIB, pipeline_image_memory, plan_batch

    per_image = pipeline_image_memory(pipe, guide, guide_side, resolution, lookahead_steps)
    free, total = torch.cuda.mem_get_info(device)
    sharing = ranks_on_device(device.index, torch.cuda.device_count())
    free //= sharing  # torchrun ranks that share this GPU split its free memory
    batch, checkpointing = plan_batch(free, per_image, guided, checkpointing)
    need = (per_image.checkpointed if checkpointing else per_image.plain) if guided else per_image.unguided
    if batch < 1:
        raise DistDiffError(f"not even one image fits: {need / GIB:.1f} GiB per image predicted, {free / GIB:.1f} of "
                            f"{total / GIB:.1f} GiB free on {device}; free the GPU or lower --resolution")
    logger.info("--batch_size auto: %d (%.2f GiB per image predicted%s; %.1f of %.1f GiB free on %s%s)", batch,
                need / GIB, ", gradient checkpointing" if checkpointing else "", free / GIB, total / GIB, device,
                f", its share for {sharing} ranks" if sharing > 1 else "")
    return batch, checkpointing


class EnergyRecorder:
    """The manifest's energies of the chosen rows of one batch, as a GuidedSampler observer;
    measuring repeats model calls without gradients (on those rows only) and never changes an image.

    transform: the look-ahead energy (the estimator the step lowers) of the unguided latent at the
    first application and of the guided one at the last, so repeated guidance is spanned whole.
    direct: after the last guided step, the one-step energy at the next index of the guided
    latent and of the unguided trajectory, which the recorder runs alongside from the first step.
    """

    def __init__(self, sampler, rows):
        self.sampler, self.rows = sampler, rows
        self.before, self.after, self._unguided = None, None, None

    def __call__(self, index, latents, guided, unguided, embeds, labels):
        sampler, rows = self.sampler, self.rows
        latents, guided, unguided, embeds, labels = (t[rows] for t in (latents, guided, unguided, embeds, labels))
        if sampler.guidance_cfg.mode == "transform":
            if self.before is None:
                self.before = sampler.lookahead_energy(latents, index, embeds, labels).float().cpu()
            self.after = sampler.lookahead_energy(guided, index, embeds, labels).float().cpu()
            return
        first, last = sampler.guidance_at[0], sampler.guidance_at[-1]
        self._unguided = unguided if index == first else sampler.step(self._unguided, index, embeds).prev_sample
        if index == last and index + 1 < sampler.sample_cfg.num_steps:
            for name, z in (("before", self._unguided), ("after", guided)):
                out = sampler.step(z, index + 1, embeds)
                setattr(self, name, sampler.image_energy(out.pred_original_sample, labels).float().cpu())


def merge_pieces(pieces):
    """One batch's BlockResult from those of its pieces (BatchSize runs a batch in pieces)."""
    return BlockResult(*(torch.cat([getattr(p, f.name) for p in pieces]) for f in dataclasses.fields(BlockResult)))


class GuidanceLosses:
    """Items whose guidance was lost (non-finite or all-zero gradients, kept unguided and marked),
    counted over a shard: its manifest so far, then each batch. The shard stops when more than
    `max_lost` of its items are lost, judged from the 100th item on, or when every item so far
    (at least 8, a block) is: a systematic failure stops at once, a rare bad item does not stop a
    shard for ever (an item's noise is fixed, so it would fail again on every rerun)."""

    MIN_ITEMS, MIN_SYSTEMATIC = 100, shards.BLOCK_ITEMS

    def __init__(self, previous_records=(), max_lost=0.01):
        self.max_lost = max_lost
        self.seen = len(previous_records)
        self.lost = sum(r.get("guidance") in LOST for r in previous_records)

    def check(self, status, block_id, allow_unguided):
        """Count a batch's outcomes (before it is written); raise when the shard must stop."""
        counts = {name: int((status == code).sum()) for code, name in GUIDANCE_STATUS.items() if code != GUIDED}
        lost, seen = self.lost + sum(counts.values()), self.seen + len(status)
        if sum(counts.values()):
            logger.warning("block %d: guidance lost for %d of %d items (%d non-finite, %d all-zero gradients); "
                           "%d of %d items of this shard so far", block_id, sum(counts.values()), len(status),
                           counts["nonfinite"], counts["zero_gradient"], lost, seen)
        too_many = seen >= self.MIN_ITEMS and lost > self.max_lost * seen
        systematic = seen >= self.MIN_SYSTEMATIC and lost == seen
        if (too_many or systematic) and not allow_unguided:
            raise DistDiffError(f"guidance lost for {lost} of the {seen} items of this shard so far "
                                f"({counts['nonfinite']} non-finite, {counts['zero_gradient']} all-zero gradients in "
                                f"block {block_id}); nothing of this batch was written; try --precision fp32, or "
                                "pass --allow_unguided to keep such items unguided")
        self.lost, self.seen = lost, seen
        return counts


def run_batches(sampler, sources, my_batches, out_dir, manifest, seed, repeats, batch_size, desc="expand",
                energy_every=1, allow_unguided=False):
    """Sample every unfinished batch of this shard; returns summary counters. The energy is
    measured on the items whose position in the work list is a multiple of `energy_every` (0:
    none), so every block, and so every shard, measures the same share."""
    latents = SourceLatents(sampler, sources, seed)
    counters = {"written": 0, "skipped": 0, "nonfinite": 0, "zero_gradient": 0, "upcast_retried": 0,
                "seconds": 0.0, "before": [], "after": []}
    bar = tqdm(total=sum(len(b) for _, b in my_batches), desc=desc, dynamic_ncols=True)
    guided = sampler.guidance_cfg.mode != "none"
    losses = GuidanceLosses(shards.read_manifests(manifest.parent, [manifest]))
    with shards.BackgroundWriter() as writer:  # PNG encoding overlaps with the next batch
        for block_id, batch in my_batches:
            todo = set(shards.missing_items(batch, out_dir, sources.classes))
            if todo:
                for it in todo:  # this shard alone writes its items, so a leftover temp is a killed writer's
                    remove_stale_temps(it.output_path(out_dir, sources.classes))
                start = time.time()
                result = merge_pieces(batch_size.run(
                    lambda piece: sample_block(sampler, latents, piece, seed, repeats, energy_every), batch))
                keep = [j for j, it in enumerate(batch) if it in todo]  # a resumed batch: its missing items
                lost = losses.check(result.status[keep], block_id, allow_unguided) if guided else {}
                records = _block_records(batch, todo, result, out_dir, sources.classes,
                                         (time.time() - start) / len(batch), guided)
                shards.append_manifest(manifest, records)
                writer.submit(_write_images, sampler, result.images[keep],
                              [batch[j].output_path(out_dir, sources.classes) for j in keep])
                counters["written"] += len(todo)
                for name, count in lost.items():
                    counters[name] += count
                counters["upcast_retried"] += int(result.upcast[keep].sum())
                counters["seconds"] += time.time() - start
                counters["before"] += [r["energy_before"] for r in records if r["energy_before"] is not None]
                counters["after"] += [r["energy_after"] for r in records if r["energy_after"] is not None]
            counters["skipped"] += len(batch) - len(todo)
            bar.update(len(batch))
    bar.close()
    counters["loss_scale"] = sampler.loss_scale.counts()
    return counters


@dataclasses.dataclass
class BlockResult:
    """What sampling a batch gives, per item: decoded images [B, 3, H, W] in [-1, 1], guidance
    outcome [B], energy before / after guidance [B] (NaN where not measured), the smallest
    half-precision loss scale its gradients used [B] (NaN: none), and whether it was redone with
    the models upcast to fp32 [B]."""
    images: torch.Tensor
    status: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    loss_scale: torch.Tensor
    upcast: torch.Tensor


def sample_block(sampler, latents, block, seed, repeats, energy_every=0):
    """BlockResult of one block, every item drawing from its own seed; the energy is measured on
    the items whose work-list position is a multiple of `energy_every` (0: none). An item whose
    half-precision gradients are non-finite at every loss scale is sampled once more with the
    models upcast to fp32 before it counts as lost."""
    posts = [latents.get(it.index) for it in block]
    draws = draw_items(block, lambda index, k: item_generator(seed, index, k), sampler.latent_shape(), repeats,
                       sampler.prompts_per_class, sampler.sample_cfg)
    mean, std = torch.stack([p[0] for p in posts]), torch.stack([p[1] for p in posts])
    labels = torch.tensor([it.label for it in block])
    rows = [j for j, it in enumerate(block) if energy_every and it.position % energy_every == 0]
    recorder = EnergyRecorder(sampler, torch.tensor(rows)) if rows and sampler.guidance_cfg.mode != "none" else None
    sampler.loss_scale.take_row_scales()  # drop what an attempt cut short (out of memory) left
    images, status = sampler.sample(mean, std, labels, draws, recorder)
    scales = sampler.loss_scale.take_row_scales()
    result = BlockResult(images, status, *(torch.full((len(block),), float("nan")) for _ in range(2)),
                         torch.full((len(block),), float("nan")) if scales is None else scales.float(),
                         torch.zeros(len(block), dtype=torch.bool))
    if recorder is not None and recorder.before is not None:
        result.before[rows], result.after[rows] = recorder.before, recorder.after
    redo = [j for j in range(len(block)) if status[j] == NONFINITE and sampler.dtype != torch.float32]
    if redo:
        with upcast(sampler):
            images, status = sampler.sample(mean[redo].float(), std[redo].float(), labels[redo],
                                            [draws[j] for j in redo])
        logger.warning("%d item(s) non-finite at every loss scale: redone in fp32, %d guided", len(redo),
                       int((status == GUIDED).sum()))
        result.images = result.images.clone()  # out of inference mode, to be written into
        result.images[redo], result.status[redo] = images.to(result.images.dtype), status.to(result.status.device)
        result.upcast[redo] = True
        result.before[redo], result.after[redo] = float("nan"), float("nan")  # they measured the failed pass
    broken = [block[j] for j in (~finite_rows(result.images)).nonzero().flatten().tolist()]
    if broken:  # a diverged sample would be written as a black or grey PNG and trained on
        raise DistDiffError(f"{len(broken)} image(s) of a batch decoded to NaN/inf (first: copy {broken[0].k} of source "
                            f"{broken[0].index}): the sampling diverged; check --cfg_scale, --step_size and --precision "
                            "(the batch is not written; earlier batches are kept)")
    return result


@contextlib.contextmanager
def upcast(sampler):
    """The modules sampling runs (UNet, VAE decoder, guide) and the prompt embeddings in fp32 for a
    while; each module gets its own dtype back exactly (fp16 and bf16 are subsets of fp32)."""
    from diffusers.utils import logging as diffusers_logging

    pipe = sampler.pipe
    modules = [m for m in (pipe.unet, pipe.vae.decoder, pipe.vae.post_quant_conv, sampler.guide) if m is not None]
    dtypes = [next(m.parameters()).dtype for m in modules]
    saved, verbosity = (sampler.dtype, sampler.prompt_embeds), diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its advice on .to(dtype) concerns loading, not a round trip
    for module in modules:
        module.to(torch.float32)
    sampler.dtype, sampler.prompt_embeds = torch.float32, saved[1].float()
    try:
        yield sampler
    finally:
        for module, dtype in zip(modules, dtypes):
            module.to(dtype)
        sampler.dtype, sampler.prompt_embeds = saved
        diffusers_logging.set_verbosity(verbosity)


def _block_records(block, todo, result, out_dir, class_names, seconds, guided=True):
    """Manifest records of the block's items that were missing."""
    numbers = {name: [None if v != v else round(v, 6) for v in getattr(result, name).tolist()]  # NaN: none
               for name in ("before", "after", "loss_scale")}
    status = [GUIDANCE_STATUS[code] if guided else "none" for code in result.status.tolist()]  # one copy off the GPU
    upcast_rows = result.upcast.tolist()
    return [_record(it, j, out_dir, class_names, numbers, seconds, status[j], upcast_rows[j])
            for j, it in enumerate(block) if it in todo]


def _write_images(sampler, images, paths):
    """PIL conversion and atomic PNG writes of one batch (runs on the writer thread)."""
    for image, path in zip(sampler.to_pil(images), paths):
        atomic_save_image(image, path)


def _record(item, j, out_dir, class_names, numbers, seconds, guidance, upcast_row):
    """One manifest line (source paths relative to the split dir, so manifests are portable);
    `guidance` is the item's outcome: guided, nonfinite, zero_gradient (kept unguided) or none;
    loss_scale the smallest half-precision loss scale its gradients used, "fp32" when it was redone
    with the models upcast, None without a half-precision backward."""
    path = item.output_path(out_dir, class_names)
    return {"source": item.source_key, "index": item.index, "position": item.position,
            "k": item.k, "class": class_names[item.label], "guidance": guidance,
            "path": str(path.relative_to(out_dir)), "seconds": round(seconds, 4),
            "energy_before": numbers["before"][j], "energy_after": numbers["after"][j],
            "loss_scale": "fp32" if upcast_row else numbers["loss_scale"][j]}


def summary_line(counters):
    """images written / skipped, images/s, energy before -> after and fraction that dropped."""
    line = (f"written {counters['written']}, skipped {counters['skipped']}, "
            f"{counters['written'] / max(counters['seconds'], 1e-9):.2f} images/s")
    if counters["before"]:
        before, after = np.array(counters["before"]), np.array(counters["after"])
        line += (f", energy {before.mean():.4f} -> {after.mean():.4f} "
                 f"(dropped for {100 * np.mean(after < before):.1f} % of the {len(before)} items measured)")
    scale = counters.get("loss_scale", {})
    if any(scale.get(k) for k in scale if k.startswith("rows_at_")):
        used = ", ".join(f"{k[len('rows_at_'):]}: {v}" for k, v in scale.items() if k.startswith("rows_at_") and v)
        line += (f", loss scale rows ({used}), {scale['retried_rows']} rows retried, "
                 f"{counters['upcast_retried']} items redone in fp32, scale now {scale['scale_now']:g}")
    return line + (f", guidance lost (kept unguided): {counters['nonfinite']} non-finite, "
                   f"{counters['zero_gradient']} all-zero gradients")


def class_prompts(spec, classes, prompts="project", prompt_file=None):
    """Per class, its list of prompts: the dataset template's one (the project's or the authors'
    set), or with a prompt file (the authors' --language_enhance) the sentences listed for it."""
    if prompt_file is None:
        return [[prompt] for prompt in spec.class_prompts(classes, prompts)]
    path = Path(prompt_file)
    if not path.is_file():
        raise DistDiffError(f"prompt file {path} not found; --language_enhance reads a JSON or YAML mapping "
                            "of class folder names to lists of sentences (--prompt_file)")
    if path.suffix == ".pkl":  # the authors' data/<dataset>_le.pkl; unpickling runs code: trusted files only
        import pickle
        with open(path, "rb") as f:
            table = pickle.load(f)
    else:
        table = yaml.safe_load(path.read_text()) or {}  # YAML reads JSON too
    if not isinstance(table, dict):
        raise DistDiffError(f"{path} holds a {type(table).__name__}, not a mapping of class names to sentences")
    # By folder name, or by the words of the prompt (the authors' keys: underscores as spaces);
    # their lists may be numpy arrays, hence len() and str().
    found = [next((table[k] for k in (name, spec.prompt_name(name)) if len(table.get(k, ()))), None) for name in classes]
    missing = [name for name, sentences in zip(classes, found) if sentences is None]
    if missing:
        raise DistDiffError(f"{path} has no sentences for class(es) {missing[:5]}")
    return [[str(s) for s in sentences] for sentences in found]


def build_sampler(pipe, guide, guide_input, protos, prompts, sample_cfg, guidance_cfg, device):
    """The GuidedSampler; `prompts[c]` lists class c's prompts (class_prompts)."""
    logger.info("prompts: %s%s", prompts[:3], " ..." if len(prompts) > 3 else "")
    return GuidedSampler(pipe, guide, guide_input, protos, prompts, sample_cfg, guidance_cfg, device)
