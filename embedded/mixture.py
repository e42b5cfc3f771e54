"""Training data of a diffusion prior as a mixture of dataset splits (docs/domain_shift.md).

    digits:prior=0.1,printed:prior=0.9

Every mixture has the same total count (by default the size of the target's own `prior` split),
so between two priors only the mixture changes. Each component contributes round(fraction x
total) images (largest remainder, so the counts add up), drawn class-balanced from a seeded
per-class permutation; the class folders of every component must match the target's.
"""
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distdiff import DistDiffError
from distdiff.registry import ensure_prepared, get_dataset

TOLERANCE = 1e-6
PRIOR_ROOT = Path("checkpoint") / "prior"  # scripts/train_prior.py's default --out, under the repo root


@dataclass(frozen=True)
class Component:
    """One part of a mixture: a dataset split and its share of the images."""
    dataset: str
    split: str
    fraction: float


def parse_mixture(text):
    """'name:split=fraction,...' -> tuple of Components; the fractions must sum to 1."""
    parts = [p.strip() for p in (text or "").split(",")]
    if not text or not all(parts):
        raise DistDiffError(f"--prior_data {text!r}: expected name:split=fraction[,name:split=fraction...]")
    components = []
    for part in parts:
        source, _, fraction = part.partition("=")
        name, _, split = source.rpartition(":")  # folder:<path>:split works too
        try:
            value = float(fraction)
        except ValueError:
            raise DistDiffError(f"--prior_data: {part!r} needs a numeric fraction, as in digits:prior=0.5") from None
        if not name or not split or not 0.0 < value <= 1.0:
            raise DistDiffError(f"--prior_data: {part!r} must read name:split=fraction with 0 < fraction <= 1")
        get_dataset(name)  # unknown names fail here, with the list of known ones
        components.append(Component(name, split, value))
    if len({(c.dataset, c.split) for c in components}) < len(components):
        raise DistDiffError(f"--prior_data {text!r} names a split twice")
    total = sum(c.fraction for c in components)
    if abs(total - 1.0) > TOLERANCE:
        raise DistDiffError(f"--prior_data {text!r}: the fractions sum to {total:g}, not 1")
    return tuple(components)


def component_counts(components, total):
    """Images per component: round(fraction x total), by largest remainder so they sum to total."""
    exact = [c.fraction * total for c in components]
    counts = [int(np.floor(x)) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:total - sum(counts)]:
        counts[i] += 1
    return counts


def balanced_subset(labels, count, seed):
    """`count` indices, as class-balanced as the classes allow: a seeded permutation per class,
    then one from each class in turn."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    picked = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(int(queue.pop(0)))
    return sorted(picked)


def load_mixture(components, classes, total, image_size, seed, load_images):
    """Images [total, 3, S, S] and labels of a mixture, checked before any is drawn.

    `classes` are the target's class folders; `load_images(spec, split, size)` reads one split.
    """
    specs = [get_dataset(c.dataset) for c in components]
    loaded = []
    for comp, spec, count in zip(components, specs, component_counts(components, total)):
        ensure_prepared(spec)
        images, labels, names = load_images(spec, comp.split, image_size)  # a missing or empty split: one-line error
        if names != list(classes):
            raise DistDiffError(f"--prior_data: {comp.dataset}:{comp.split} has classes {names}, "
                                f"the target has {list(classes)}")
        if count > len(images):
            raise DistDiffError(f"--prior_data: {comp.dataset}:{comp.split} has {len(images)} images, "
                                f"fewer than the {count} its fraction asks for")
        loaded.append((images, labels, count))
    out_images, out_labels = [], []
    for i, (images, labels, count) in enumerate(loaded):
        keep = torch.tensor(balanced_subset(labels.numpy(), count, [seed, i]), dtype=torch.long)
        out_images.append(images[keep])
        out_labels.append(labels[keep])
    return torch.cat(out_images), torch.cat(out_labels)


def prior_name(dataset, prior_data=None):
    """The prior's folder name: the dataset, or for a mixture <dataset>_mix_<part><fraction>_...
    (e.g. digits_mix_digits0.1_printed0.9: never the in-domain prior's folder)."""
    if not prior_data:
        return dataset
    parts = "_".join(f"{c.dataset}{c.fraction:g}" for c in parse_mixture(prior_data))
    return re.sub(r"[^\w.-]", "_", f"{dataset}_mix_{parts}")


if __name__ == "__main__":  # the prior's folder, for shell scripts
    if len(sys.argv) not in (2, 3) or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m embedded.mixture DATASET [MIXTURE]   (prints the prior's folder, "
                 "checkpoint/prior/<name>)")
    print(PRIOR_ROOT / prior_name(*sys.argv[1:]))
