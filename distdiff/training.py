"""The one training entry point behind train_original.py and train_expand.py."""
import logging
import math

from torch.utils.data import ConcatDataset

from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff.augment import batch_transform, check_aug
from distdiff.engine import fit, is_complete, read_results
from distdiff.fileio import save_args, setup_logging
from distdiff.runs import autocast_dtype, configure_cpu, resolve_device, seed_everything, train_run_dir
from models.classifiers import UnknownArch, WeightsUnavailable, create_classifier

logger = logging.getLogger(__name__)


def build_transforms(args):
    """((train head, train tail), eval) transforms from the resolved args."""
    norm = dict(mean=ds.IMAGENET_MEAN, std=ds.IMAGENET_STD)
    train = ds.train_transform(args.image_size, args.resize_size, args.rotation, args.hflip,
                               split=True, aug=args.aug, **norm)
    test = ds.test_transform(args.image_size, args.resize_size, **norm)
    return train, test


def build_datasets(spec, args, expanded_dirs=()):
    """(train, val, test, classes, n_original); expanded ImageFolders are concatenated to the
    original train split."""
    (head, tail), test_tf = build_transforms(args)
    train = ds.load_split(spec, spec.train_split)
    parts = [ds.preload(train, head, tail)]
    for folder in expanded_dirs:
        expanded = ds.image_folder(folder, hint="run expand_distdiff.py first")
        ds.check_same_classes(train.classes, expanded.classes, f"expanded set {folder}")
        parts.append(ds.preload(expanded, head, tail))
    val = ds.load_split(spec, spec.val_split, test_tf)
    test = ds.load_split(spec, spec.test_split, test_tf)
    for name, split in (("val", val), ("test", test)):
        if split is not None:
            ds.check_same_classes(train.classes, split.classes, f"{name} split of {spec.name}")
    return (ConcatDataset(parts) if len(parts) > 1 else parts[0]), val, test, train.classes, len(train)


def equal_iteration_epochs(epochs, n_original, n_total, batch_size):
    """Epochs on the expanded set that give the optimizer as many steps as `epochs` on the
    original set (the paper instead keeps epochs fixed, so expansion also buys iterations)."""
    steps = epochs * math.ceil(n_original / batch_size)
    return max(1, round(steps / math.ceil(n_total / batch_size)))


def classifier_meta(args, classes):
    """What a later stage needs to rebuild the classifier and its exact input transform."""
    return {"arch": args.arch, "num_classes": len(classes), "classes": list(classes),
            "dataset": args.dataset, "image_size": args.image_size,
            "resize_size": args.resize_size, "mean": list(ds.IMAGENET_MEAN),
            "std": list(ds.IMAGENET_STD), "pretrained": args.pretrained}


def train_classifier(args, exp=None, expanded_dirs=(), equal_iterations=False):
    """Train (or resume, or skip if complete) one run; returns its results dict."""
    spec = ds.get_dataset(args.dataset)
    check_aug(args.aug)  # before the run dir name is built from it
    run_dir = train_run_dir(args.output, args.dataset, args.arch, args.pretrained, args.lr,
                            args.seed, exp, args.aug)
    setup_logging()  # stdout only until the inputs are known to be good: no stray run dirs
    if is_complete(run_dir):
        logger.info("%s is complete (results.json exists); nothing to do", run_dir)
        return read_results(run_dir)
    device = resolve_device(args.device, args.gpu)
    configure_cpu(args.threads)
    ds.ensure_prepared(spec)
    seed_everything(args.seed)
    train, val, test, classes, n_original = build_datasets(spec, args, expanded_dirs)
    if equal_iterations:
        args.epochs = equal_iteration_epochs(args.epochs, n_original, len(train), args.batch_size)
    try:
        model = create_classifier(args.arch, len(classes), args.pretrained)
    except (UnknownArch, WeightsUnavailable) as err:
        raise DistDiffError(str(err)) from None
    setup_logging(run_dir)
    save_args(run_dir, args, extra={"exp": exp, "expanded_dirs": [str(d) for d in expanded_dirs],
                                    "n_train": len(train), "device": str(device)})
    logger.info("%s: %d train images (%d classes), val %s, test %d, device %s", run_dir,
                len(train), len(classes), len(val) if val else "-", len(test), device)
    cfg = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "momentum",
                                         "weight_decay", "seed", "workers")}
    cfg["amp_dtype"] = autocast_dtype(args.precision) if device.type == "cuda" else None
    results = fit(run_dir, model, train, val, test, cfg, classifier_meta(args, classes), device,
                  batch_transform=batch_transform(args.aug, len(classes)))
    logger.info("results: %s", {k: results[k] for k in sorted(results)})
    return results
