"""Classifier training and evaluation shared by train_original.py and train_expand.py.

Recipe (paper): SGD, Nesterov momentum 0.9, lr 0.1, weight decay 1e-4, cosine schedule,
100 epochs, batch 64. Each epoch writes last.pt (atomic) and a summary.csv row; the run is
complete only once results.json exists, and rerunning an incomplete run resumes from last.pt.
"""
import csv
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from distdiff import DistDiffError
from distdiff.config import auto_or_count
from distdiff.fileio import atomic_torch_save, atomic_write_json, atomic_write_text
from models.classifiers import UnknownArch, create_classifier

logger = logging.getLogger(__name__)
SUMMARY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_acc", "seconds")


def is_complete(run_dir):
    """A run is complete only when its results.json exists."""
    return (Path(run_dir) / "results.json").is_file()


def read_results(run_dir):
    """The results.json of a finished run."""
    return json.loads((Path(run_dir) / "results.json").read_text())


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

# "auto" workers on CUDA stop at 16. The training tail (RandomRotation on the cached uint8 tensor
# dominates) costs about 4.5 ms per 224-px image on one core (docs/performance.md), so 8 workers
# top out near 1,800 images/s, below what one recent GPU trains ResNet-50 at in bf16; beyond 16 a
# node's other GPUs need the cores. Forked workers share the cache's pages (nothing writes them).
MAX_AUTO_WORKERS = 16


def available_cores():
    """CPU cores this process may run on (its affinity mask: taskset, SLURM cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity outside Linux
        return os.cpu_count() or 1


def parse_workers(value):
    """--workers as "auto" or a whole number >= 0; anything else is a one-line error."""
    return auto_or_count(value, "--workers", "a number of DataLoader processes >= 0 (0 = the main process)")


def loader_workers(workers, device_type, cores=None, jobs=1):
    """DataLoader worker processes for --workers on a device of type `device_type`.

    "auto" is 0 (the main process) on the CPU, where workers would only compete with the
    training threads for the same cores, and on CUDA the available cores divided among the `jobs`
    training processes running side by side (one per GPU with scripts/run_jobs.sh), at most
    MAX_AUTO_WORKERS and at least 1, so that decoding and augmentation overlap with the GPU's
    work. A number is used as given.
    """
    workers = parse_workers(workers)
    if workers != "auto":
        return workers
    if device_type != "cuda":
        return 0
    return max(1, min((cores or available_cores()) // max(1, jobs), MAX_AUTO_WORKERS))


PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready in shared memory


def sample_bytes(batch_size, image_size):
    """Bytes of one float32 batch of RGB images, as a worker hands it over through /dev/shm."""
    return batch_size * 3 * image_size * image_size * 4


def shm_safe_workers(workers, batch_bytes, free_bytes=None, margin=0.5):
    """`workers`, lowered where their batches in flight (PREFETCH_FACTOR per worker) would fill more
    than `margin` of the free /dev/shm (a container's default is 64 MB): DataLoader workers hand
    batches over there, and a full /dev/shm kills them with a bus error mid-epoch."""
    if workers == 0:
        return 0
    if free_bytes is None:
        try:
            free_bytes = shutil.disk_usage("/dev/shm").free
        except OSError:
            return workers  # no /dev/shm (not Linux): the platform's own sharing applies
    fits = int(free_bytes * margin // (PREFETCH_FACTOR * batch_bytes))
    if fits >= workers:
        return workers
    logger.warning("/dev/shm has %d MB free and each DataLoader worker keeps ~%d MB of batches there: %d worker(s) "
                   "instead of %d%s (give the container more, e.g. docker run --shm-size 8g)", free_bytes >> 20,
                   PREFETCH_FACTOR * batch_bytes >> 20, fits, workers, "; loading in the main process" if not fits else "")
    return fits


def make_loader(dataset, batch_size, shuffle, workers, seed=0, pin_memory=False, persistent=False):
    """DataLoader whose shuffling order depends only on `seed` (set per epoch for resume).

    With workers > 0 the augmentation draws come from the workers' RNGs, which DataLoader seeds
    from `seed`'s generator when the loader is iterated, so they too depend only on `seed` and
    the worker count. `pin_memory` lets `.to(device, non_blocking=True)` copy asynchronously;
    `persistent` keeps the worker pool between passes (for loaders with no random draws).
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, drop_last=False, pin_memory=pin_memory,
                      persistent_workers=persistent and workers > 0)


def build_optimizer(model, lr, momentum, weight_decay, head_only=False):
    """SGD with Nesterov momentum, as in the paper; `head_only` freezes every parameter but the
    classification head's (timm's get_classifier()) and optimises the head alone (--train_fc)."""
    params = model.parameters()
    if head_only:
        model.requires_grad_(False)
        head = model.get_classifier()
        head.requires_grad_(True)
        params = head.parameters()
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def train_one_epoch(model, loader, optimizer, device, amp_dtype=None, scaler=None, desc="train",
                    batch_transform=None, scheduler=None, memory_format=torch.preserve_format, views_loss=None):
    """One pass over `loader` (any sized iterable of (images, labels) batches); returns (mean
    loss, accuracy). `scheduler`, if given, steps after every batch (a per-step schedule).

    `batch_transform(images, labels) -> (images, soft targets [B, C])` (MixUp, CutMix) turns
    the step into soft-label cross-entropy; accuracy then counts agreement with the argmax of
    the mixed target, i.e. with the class that dominates the mixed image. `views_loss(logits,
    labels)` takes batches of stacked views [B, V, C, H, W] (augmix_jsd), run as one [V*B] batch
    view by view; accuracy is the first (plain) view's.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    # A per-batch bar only where an epoch is long enough to need one.
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                               disable=len(loader) < 20):
        if views_loss is not None:  # [B, V, C, H, W] -> [V*B, C, H, W], view by view
            images = images.transpose(0, 1).flatten(0, 1)
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        if batch_transform is not None:
            images, targets = batch_transform(images, labels)
            labels = targets.argmax(1)
        else:
            targets = labels
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
            if views_loss is not None:
                loss, logits = views_loss(logits, targets), logits[:len(labels)]
            else:
                loss = F.cross_entropy(logits, targets)  # class indices or probabilities
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if not math.isfinite(loss.item()):
            raise DistDiffError("training loss became NaN/inf; lower --lr")
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return total_loss / seen, 100.0 * correct / seen


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, memory_format=torch.preserve_format):
    """Top-1 accuracy in percent; None when there is no loader."""
    if loader is None:
        return None
    model.eval()
    correct, seen = 0, 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            correct += (model(images).argmax(1) == labels).sum().item()
        seen += len(labels)
    return 100.0 * correct / seen


# ---------------------------------------------------------------------------
# Run files
# ---------------------------------------------------------------------------

def write_summary(run_dir, history):
    """Rewrite summary.csv (one row per finished epoch) atomically from the history.

    Not timm.utils.update_summary: it appends, so an epoch redone after a kill would appear twice
    and a kill mid-write would leave a torn row; rewriting from the checkpointed history cannot.
    (timm's CheckpointSaver is not used for the same reason: it keeps neither the RNG state nor
    the history that an exact resume needs, and it pickles the argparse namespace.)"""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in SUMMARY_FIELDS})
    atomic_write_text(Path(run_dir) / "summary.csv", buf.getvalue())


def summarize(history, seed, n_train, seconds):
    """results.json fields from the per-epoch history, over the evaluated epochs only (rows
    that --eval_every skipped have test_acc None).

    best_acc is the paper's number (best test accuracy over epochs, i.e. selected on test);
    last_acc and test_at_best_val are the honest ones.
    """
    rows = [row for row in history if row["test_acc"] is not None]
    test = [row["test_acc"] for row in rows]
    best = int(np.argmax(test))
    results = {"best_acc": test[best], "last_acc": test[-1], "epochs": len(history), "seed": seed,
               "n_train": n_train, "best_epoch": rows[best]["epoch"], "seconds": seconds}
    if rows[-1]["val_acc"] is not None:
        best_val = int(np.argmax([row["val_acc"] for row in rows]))  # first epoch with the best val accuracy
        results.update(best_val_acc=rows[best_val]["val_acc"], best_val_epoch=rows[best_val]["epoch"],
                       test_at_best_val=rows[best_val]["test_acc"])
    return results


def write_results(run_dir, results):
    """results.json (complete marker, written last) plus results.yaml for compatibility."""
    atomic_write_text(Path(run_dir) / "results.yaml",
                      yaml.safe_dump({"best_accuracy": results["best_acc"]}))
    atomic_write_json(Path(run_dir) / "results.json", results)


# ---------------------------------------------------------------------------
# The training loop with resume
# ---------------------------------------------------------------------------

def fit(run_dir, model, train_set, val_set, test_set, device, meta, cfg, *, amp_dtype=None, batch_transform=None,
        views_loss=None):
    """Train with the recipe `cfg` (a distdiff.recipe.TrainConfig, its epochs, workers and
    channels_last resolved: training.train_classifier), resuming from <run_dir>/last.pt; returns
    the results.json dict.

    `meta` (arch, classes, transform sizes) is stored in every checkpoint so the guide can be
    rebuilt without the training script's arguments. `batch_transform` is MixUp/CutMix and
    `views_loss` the loss of stacked views (see train_one_epoch); the draws come from torch's
    global RNG, which last.pt stores.

    model_best.pth.tar (the guide that expansion uses) is the epoch with the best val accuracy
    when there is a val split, and the last epoch otherwise: never selected on test, unless
    `cfg.guide_selection` is "test" (the authors' choice, which the run's args.yaml names as such).
    The val and test passes run every `eval_every` epochs and after the last one; only those
    epochs can be selected.
    """
    run_dir = Path(run_dir)
    epochs, batch_size, seed, workers, eval_every = cfg.epochs, cfg.batch_size, cfg.seed, cfg.workers, cfg.eval_every
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)  # resolve_device made `device` current, so pinning uses it
    optimizer = build_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay, head_only=cfg.train_fc)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    run_args = dict(epochs=epochs, batch_size=batch_size, lr=cfg.lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, seed=seed, workers=workers)
    history, best_score, elapsed = [], -1.0, 0.0
    state = _load_last(run_dir, model, optimizer, scheduler, epochs, scaler)
    if state is not None:
        history, best_score, elapsed = state["history"], state["best_score"], state["seconds"]
        logger.info("resuming %s from epoch %d", run_dir, len(history))
        if state["args"].get("workers", 0) != workers:
            logger.warning("the interrupted run used %s DataLoader workers and this one uses %d: the "
                           "augmentation draws (made by the workers) differ from an uninterrupted run's",
                           state["args"].get("workers", 0), workers)
    pin = device.type == "cuda"
    # The evaluation passes have no random draws, so one worker pool can serve all of them.
    eval_loaders = [make_loader(s, cfg.eval_batch_size, False, workers, pin_memory=pin, persistent=True)
                    if s is not None else None for s in (val_set, test_set)]
    bar = tqdm(range(len(history), epochs), desc=f"epochs {run_dir.name}",
               initial=len(history), total=epochs, dynamic_ncols=True)
    for epoch in bar:
        start = time.time()
        # A new loader per epoch, not a persistent one: its workers are seeded from this epoch's
        # generator, so the augmentation of epoch e depends only on (seed, e) and a resumed run
        # repeats it exactly. Persistent workers would carry their RNG state over from earlier
        # epochs, which last.pt cannot restore. Restarting the pool costs a fork per worker and
        # the first batches' latency, once per epoch.
        loader = make_loader(train_set, batch_size, True, workers, seed=seed * 100003 + epoch, pin_memory=pin)
        current_lr = optimizer.param_groups[0]["lr"]
        loss, train_acc = train_one_epoch(model, loader, optimizer, device, amp_dtype, scaler,
                                          batch_transform=batch_transform, memory_format=memory_format,
                                          views_loss=views_loss)
        scheduler.step()
        val_acc = test_acc = None
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            val_acc, test_acc = (evaluate(model, ld, device, amp_dtype, memory_format) for ld in eval_loaders)
        elapsed += time.time() - start
        history.append({"epoch": epoch + 1, "lr": current_lr, "train_loss": round(loss, 5),
                        "train_acc": round(train_acc, 3), "val_acc": val_acc, "test_acc": test_acc,
                        "seconds": round(time.time() - start, 3)})
        # Selection on val; without a val split, no selection at all (the last epoch). An epoch
        # without a val pass (--eval_every) is never selected.
        score = test_acc if cfg.guide_selection == "test" else epoch if eval_loaders[0] is None else val_acc
        improved = score is not None and score > best_score
        if improved:
            best_score = score
        checkpoint = _checkpoint(model, optimizer, scheduler, history, best_score, elapsed, run_args, meta, scaler)
        if improved:
            atomic_torch_save(checkpoint, run_dir / "model_best.pth.tar")
        atomic_torch_save(checkpoint, run_dir / "last.pt")
        write_summary(run_dir, history)
        bar.set_postfix(loss=f"{loss:.3f}", val=val_acc, test=test_acc)
        logger.info("epoch %d/%d loss %.4f train %.1f val %s test %s (%.1fs)", epoch + 1,
                    epochs, loss, train_acc, _fmt(val_acc), _fmt(test_acc), time.time() - start)
    results = summarize(history, seed, len(train_set), round(elapsed, 2))
    write_results(run_dir, results)
    return results


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"


def _checkpoint(model, optimizer, scheduler, history, best_score, seconds, run_args, meta, scaler=None):
    """Everything needed to resume exactly: weights, optimizer, schedule, RNG, history, and the
    fp16 loss scale where a GradScaler runs."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": len(history), "history": history,
            "best_score": best_score, "seconds": seconds, "meta": meta, "args": run_args,
            "rng": torch.get_rng_state(), **({"scaler": scaler.state_dict()} if scaler is not None else {})}


def _load_last(run_dir, model, optimizer, scheduler, epochs, scaler=None):
    """Restore last.pt if present; an epoch budget change is an error, not a silent restart."""
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["epoch"] > epochs:
        raise DistDiffError(f"{path} has {state['epoch']} epochs but --epochs is {epochs}; "
                            "use another output dir or delete the run")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return state


# ---------------------------------------------------------------------------
# Loading a trained classifier (the guide)
# ---------------------------------------------------------------------------

def load_classifier(path, device="cpu", num_classes=None, arch=None):
    """Rebuild a classifier from a checkpoint written by `fit`; returns (model, meta).

    Mismatches with the expected class count or arch are clear errors.
    """
    path = Path(path)
    if not path.is_file():
        raise DistDiffError(f"classifier checkpoint {path} not found; train it with train_original.py")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = state["meta"]
    except Exception as err:  # a truncated or foreign file
        raise DistDiffError(f"{path} is not a checkpoint written by this project ({err})") from None
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise DistDiffError(f"{path} was trained for {meta['num_classes']} classes but the dataset "
                            f"has {num_classes}; pass the guide trained on this dataset")
    if arch is not None and meta["arch"] != arch:
        raise DistDiffError(f"{path} holds arch {meta['arch']!r}, not {arch!r}")
    try:
        model = create_classifier(meta["arch"], meta["num_classes"])
    except UnknownArch as err:
        raise DistDiffError(str(err)) from None
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta
