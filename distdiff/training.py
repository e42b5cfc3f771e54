"""The one training entry point behind train_original.py and train_expand.py."""
import dataclasses
import logging
import math
import os
import re
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset

from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff import registry, shards
from distdiff.augment import batch_transform, check_aug, views_loss
from distdiff.config import save_args
from distdiff.devices import configure_cpu, resolve_device, train_precision
from distdiff.engine import fit, is_complete, loader_workers, parse_workers, read_results, sample_bytes, shm_safe_workers
from distdiff.fileio import remove_stale_temps_in
from distdiff.recipe import TrainConfig
from distdiff.runs import setup_logging, train_run_dir
from models.classifiers import UnknownArch, WeightsUnavailable, check_arch, create_classifier

logger = logging.getLogger(__name__)


def resize_arg(cfg):
    """torchvision's Resize size: an int (shorter side) or a (height, width) pair (squash)."""
    return cfg.resize_size if cfg.resize_mode == "shorter" else [cfg.resize_size, cfg.resize_size]


# The authors' train_transform.py (line 251) sets these on a ConcatDataset's `transform` attribute,
# which no loader reads: their runs train with the plain recipe, and so do ours under --preset authors.
AUTHORS_UNAPPLIED_AUGS = ("autoaug", "randaug", "cutout")


def applied_aug(cfg):
    """The augmentation a run applies: --aug, except under --preset authors where theirs is never
    applied (AUTHORS_UNAPPLIED_AUGS)."""
    return "default" if cfg.preset == "authors" and cfg.aug in AUTHORS_UNAPPLIED_AUGS else cfg.aug


def build_transforms(cfg):
    """((train head, train tail), (eval head, eval tail)) transforms."""
    norm = dict(mean=registry.IMAGENET_MEAN, std=registry.IMAGENET_STD)
    train = ds.train_transform(cfg.image_size, resize_arg(cfg), cfg.rotation, cfg.hflip,
                               split=True, aug=applied_aug(cfg), interpolation=cfg.interpolation, **norm)
    test = ds.test_transform(cfg.image_size, resize_arg(cfg), split=True, interpolation=cfg.interpolation, **norm)
    return train, test


def selection_label(guide_selection, has_val):
    """How model_best.pth.tar was chosen, in words for args.yaml."""
    if guide_selection == "test":
        return "best_test (the authors' selection, made on test)"
    return "best_val" if has_val else "last_epoch"


def check_values(cfg):
    """One-line errors for --eval_every, --workers, --cache_mb and $DISTDIFF_TRAIN_JOBS, before any
    data is read."""
    if isinstance(cfg.eval_every, bool) or not isinstance(cfg.eval_every, int) or cfg.eval_every < 1:
        raise DistDiffError(f"--eval_every {cfg.eval_every!r}: evaluate every N >= 1 epochs (the last epoch "
                            "is always evaluated)")
    parse_workers(cfg.workers)
    ds.parse_cache_mb(cfg.cache_mb)
    side_by_side_jobs()


def side_by_side_jobs(env=None):
    """Training processes sharing this machine: $DISTDIFF_TRAIN_JOBS (scripts/run_jobs.sh sets
    it), else 1. --cache_mb auto divides its memory share among them."""
    value = (os.environ if env is None else env).get("DISTDIFF_TRAIN_JOBS", "1")
    if not value.strip().isdigit() or int(value) < 1:
        raise DistDiffError(f"DISTDIFF_TRAIN_JOBS={value!r}: expected the number of training processes "
                            "(>= 1)")
    return int(value)


def first_copies(folder, count):
    """Keep the copies k < `count` of each source in an expanded ImageFolder (<stem>_expand_<k>.png;
    the authors' --expand_num). Returns how many images were left out."""
    def copy(path):
        match = re.search(r"_expand_(\d+)\.[^.]+$", path)
        if match is None:  # a hand-made folder (--allow_partial): no copy number to filter on
            raise DistDiffError(f"--expand_num: {path} is not named <stem>_expand_<k>.<ext> as expand_distdiff.py "
                                "writes, so its copy number is unknown")
        return int(match.group(1))
    before = len(folder.samples)
    ds.set_samples(folder, [(path, label) for path, label in folder.samples if copy(path) < count])
    return before - len(folder.samples)


def build_datasets(spec, cfg, expanded_dirs=(), threads=1, expand_num=None, repeat=0):
    """(train, val, test, classes, n_original, cache MB); expanded ImageFolders (their first
    `expand_num` copies per source, or all) are concatenated to the original train split, or the
    original split is repeated `repeat` more times (the authors' baseline of as many images per
    epoch as an expansion, with no new ones). Every image is decoded once here, before any
    training, on `threads` threads: into the cache, or as a check where the cache cannot hold it."""
    (head, tail), (eval_head, eval_tail) = build_transforms(cfg)
    train = ds.load_split(spec, spec.train_split, verify=False)
    expanded = []
    for folder in expanded_dirs:
        expanded.append(ds.image_folder(folder, hint=f"python expand_distdiff.py --dataset {spec.name} --out {folder}",
                                        verify=False))
        if expand_num is not None:
            logger.info("expanded set %s: the first %d copies of each source (%d images left out)", folder,
                        expand_num, first_copies(expanded[-1], expand_num))
        missing = ds.align_classes(expanded[-1], train.classes, f"expanded set {folder}")
        if missing:  # a complete expansion of some sources only (--limit): said, not hidden
            logger.warning("expanded set %s has no images of %d class(es) (%s%s)", folder, len(missing),
                           ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
    val = ds.load_split(spec, spec.val_split, verify=False)
    test = ds.load_split(spec, spec.test_split, verify=False)
    for name, split in (("val", val), ("test", test)):
        if split is not None:
            ds.check_same_classes(train.classes, split.classes, f"{name} split of {spec.name}")
    # The memory budget goes to the training images first: they are read every step.
    splits = [(folder, head, tail) for folder in [train, *expanded]]
    splits += [(split, eval_head, eval_tail) for split in (val, test) if split is not None]
    needs = [ds.estimate_cache_bytes(folder, transform) for folder, transform, _ in splits]
    cache_mb, reason = ds.cache_budget_mb(cfg.cache_mb, sum(needs), ds.available_memory(),
                                          side_by_side_jobs())
    logger.info("image cache: %s", reason)
    budget = ds.CacheBudget(cache_mb, threads)
    loaded = [budget.preload(*split, need) for split, need in zip(splits, needs)]
    parts, evals = loaded[:1 + len(expanded)], iter(loaded[1 + len(expanded):])
    parts = [parts[0]] * (repeat + 1) + parts[1:]  # one cache, read repeat + 1 times per epoch
    val, test = (next(evals) if split is not None else None for split in (val, test))
    return ((ConcatDataset(parts) if len(parts) > 1 else parts[0]), val, test, train.classes, len(train),
            cache_mb)


def equal_iteration_epochs(epochs, n_original, n_total, batch_size):
    """Epochs on the expanded set that give the optimizer as many steps as `epochs` on the
    original set (the paper instead keeps epochs fixed, so expansion also buys iterations)."""
    steps = epochs * math.ceil(n_original / batch_size)
    return max(1, round(steps / math.ceil(n_total / batch_size)))


def classifier_meta(cfg, classes):
    """What a later stage needs to rebuild the classifier and its exact input transform."""
    return {"arch": cfg.arch, "num_classes": len(classes), "classes": list(classes),
            "dataset": cfg.dataset, "image_size": cfg.image_size,
            "resize_size": resize_arg(cfg), "mean": list(registry.IMAGENET_MEAN),
            "std": list(registry.IMAGENET_STD), "pretrained": cfg.pretrained}


def check_expansions(expanded_dirs, data_dir=None, allow_partial=False):
    """The completeness of each expanded folder (distdiff.shards.check_expansion), read before
    any heavy work: an incomplete or unverifiable one is an error, or with `allow_partial` a
    warning; returns their summaries for args.yaml."""
    summaries = []
    for folder in expanded_dirs:
        if not Path(folder).is_dir():
            continue  # build_datasets names the missing folder and the command that writes it
        check = shards.check_expansion(folder, data_dir)
        problem = check.problem()
        if problem and not allow_partial:
            raise DistDiffError(f"{problem}; or pass --allow_partial to train on what is there")
        if problem:
            logger.warning("%s; training on it anyway (--allow_partial)", problem)
        else:
            logger.info("expansion %s: complete, %d images checked against its args.yaml and manifests",
                        folder, check.written)
        if check.unguided:
            logger.warning("expansion %s: %d of its images lost their guidance and were kept unguided "
                           "(marked in its manifests)", folder, check.unguided)
        summaries.append(check.summary())
    return summaries


QUICK_CPU_FLAGS = "--arch resnet_small --image_size 32 --resize_size 36"  # the embedded demo's classifier
CPU_HINT_SECONDS = 15 * 60  # a CPU run predicted longer than this says how long, and how to make it quick


def seconds_per_image(model, image_size, reps=2):
    """Seconds of one training image's forward and backward pass on the CPU, timed on a copy of
    the model at batch 2 (the model itself, its batch-norm statistics and the RNG stay untouched)."""
    import copy
    import time

    probe = copy.deepcopy(model).train()
    batch = torch.zeros(2, 3, image_size, image_size)
    with torch.random.fork_rng(devices=[]):
        probe(batch).sum().backward()  # warm-up: the first pass allocates
        start = time.perf_counter()
        for _ in range(reps):
            probe(batch).sum().backward()
    return (time.perf_counter() - start) / (2 * reps)


def cpu_time_hint(cfg, model, n_train, n_eval, epochs):
    """One line when a CPU run will take long: how long, and the flags of a quick run (None when short)."""
    per_image = seconds_per_image(model, cfg.image_size)
    evaluations = math.ceil(epochs / cfg.eval_every)
    seconds = per_image * (n_train * epochs + n_eval * evaluations / 3)  # an eval pass: a forward, ~1/3
    if seconds < CPU_HINT_SECONDS:
        return None
    return (f"on the CPU this run needs about {seconds / 3600:.1f} h ({1000 * per_image:.0f} ms per training image "
            f"for {cfg.arch} at {cfg.image_size} px, {epochs} epochs of {n_train}); a quick run: {QUICK_CPU_FLAGS} "
            "(and fewer --epochs), or a GPU")


def train_classifier(cfg, exp=None, expanded_dirs=(), equal_iterations=False, allow_partial=False, expand_num=None,
                     repeat=0):
    """Train (or resume, or skip if complete) one run; returns its results dict. Expanded folders
    must be complete expansions unless `allow_partial`; `expand_num` keeps each source's first
    copies, `repeat` repeats the original split instead (build_datasets)."""
    spec = registry.get_dataset(cfg.dataset, cfg.data_dir)
    if cfg.train_fc:  # its own run dir: a head-only optimizer cannot resume a full one
        exp = f"{exp}_fc" if exp else "fc"
        if not cfg.pretrained:
            logger.warning("--train_fc without --pretrained trains a head on a randomly initialised, frozen backbone")
    check_aug(cfg.aug)
    check_values(cfg)
    try:
        check_arch(cfg.arch, cfg.pretrained)
    except UnknownArch as err:
        raise DistDiffError(str(err)) from None
    run_dir = Path(cfg.run_dir) if cfg.run_dir else train_run_dir(cfg.output, cfg.dataset, cfg.arch, cfg.pretrained,
                                                                  cfg.lr, cfg.seed, exp, cfg.aug, cfg.resize_mode,
                                                                  cfg.preset)
    setup_logging()  # stdout only until the inputs are known to be good: no stray run dirs
    if is_complete(run_dir):
        logger.info("%s is complete (results.json exists); nothing to do", run_dir)
        return read_results(run_dir)
    expansions = check_expansions(expanded_dirs, cfg.data_dir, allow_partial)
    device = resolve_device(cfg.device, cfg.gpu)
    precision, amp_dtype = train_precision(cfg.precision, device)
    channels_last = device.type == "cuda" if cfg.channels_last == "auto" else cfg.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN's fastest kernels, found once
    configure_cpu(cfg.threads)
    registry.ensure_prepared(spec)
    set_seed(cfg.seed)
    workers = shm_safe_workers(loader_workers(cfg.workers, device.type, jobs=side_by_side_jobs()),
                               sample_bytes(max(cfg.batch_size, cfg.eval_batch_size), cfg.image_size))
    train, val, test, classes, n_original, cache_mb = build_datasets(spec, cfg, expanded_dirs, threads=max(1, workers),
                                                                     expand_num=expand_num, repeat=repeat)
    epochs = cfg.epochs
    if equal_iterations:
        epochs = equal_iteration_epochs(cfg.epochs, n_original, len(train), cfg.batch_size)
    try:
        model = create_classifier(cfg.arch, len(classes), cfg.pretrained,
                                  class_prompts=spec.class_prompts(classes, "authors"))  # the CLIP guide's head
    except (UnknownArch, WeightsUnavailable) as err:
        raise DistDiffError(str(err)) from None
    setup_logging(run_dir)
    if device.type == "cpu":
        hint = cpu_time_hint(cfg, model, len(train), len(val or []) + len(test), epochs)
        if hint:
            logger.warning("%s", hint)
    remove_stale_temps_in(run_dir)  # one process per run dir: a leftover temp is a killed writer's
    for partial in (e for e in expansions if e["fraction"] != 1):  # this run's log says it too
        logger.warning("training on %s: %s of its expected images present (--allow_partial)", partial["dir"],
                       "an unknown share" if partial["fraction"] is None else f"{100 * partial['fraction']:.1f} %")
    save_args(run_dir, cfg, extra={"exp": exp, "expanded_dirs": [str(d) for d in expanded_dirs],
                                   "equal_iterations": equal_iterations, "epochs_run": epochs,
                                   "expand_num": expand_num, "repeat": repeat,
                                   "allow_partial": allow_partial, "expansions": expansions,
                                   "n_train": len(train), "device_resolved": str(device),
                                   "precision_resolved": precision, "channels_last_resolved": channels_last,
                                   "cudnn_benchmark": device.type == "cuda",
                                   "workers_resolved": workers, "cache_mb_resolved": cache_mb,
                                   "guide_selection": selection_label(cfg.guide_selection, val is not None),
                                   "val_split_resolved": spec.val_description(), "aug_applied": applied_aug(cfg)})
    if applied_aug(cfg) != cfg.aug:
        logger.warning("--aug %s under --preset authors: not applied, as in the authors' code (their "
                       "train_transform.py sets it where no loader reads it); without the preset it is", cfg.aug)
    if val is None:
        logger.warning("%s has no val split: nothing is selected on val (test_at_best_val stays empty, and best_acc "
                       "is the best test epoch, chosen on test)%s", spec.name,
                       "; a folder tree holds out images of train/ for val unless its dataset.yaml says "
                       "val_per_class: 0" if spec.name.startswith("folder:") else "")
    logger.info("%s: %d train images (%d classes), val %s (%s), test %d, %d epochs, device %s, %s%s, %d DataLoader "
                "workers, image cache %d MB", run_dir, len(train), len(classes), len(val) if val else "-", spec.val_description(),
                len(test), epochs, device, precision, ", channels_last" if channels_last else "", workers, cache_mb)
    recipe = dataclasses.replace(cfg, epochs=epochs, workers=workers, channels_last=channels_last)  # as resolved
    results = fit(run_dir, model, train, val, test, device, classifier_meta(cfg, classes), recipe, amp_dtype=amp_dtype,
                  batch_transform=batch_transform(cfg.aug, len(classes)), views_loss=views_loss(applied_aug(cfg)))
    logger.info("results: %s", {k: results[k] for k in sorted(results)})
    return results
