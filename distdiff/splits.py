"""The one seeded per-class split helper (digits export, dataset preparation, val carving)."""
import numpy as np

from distdiff import DistDiffError


def per_class_split(labels, sizes, seed, rest="rest"):
    """Split sample indices per class into consecutive chunks of a seeded permutation.

    `sizes` is an ordered list of (name, per-class count); every class is permuted once with a
    generator seeded by `seed` (classes in sorted label order, so the draw is reproducible), its
    first sizes[0] indices go to the first name, the next ones to the second, and what is left
    to `rest`. Returns {name: sorted index list} including `rest`. A class with fewer images
    than the chunks need is an error.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    need = sum(n for _, n in sizes)
    chunks = {name: [] for name, _ in sizes}
    chunks[rest] = []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        if len(idx) < need:
            raise DistDiffError(f"class {label} has {len(idx)} images, fewer than the {need} that "
                                f"{', '.join(f'{n} {name}' for name, n in sizes)} need")
        start = 0
        for name, size in sizes:
            chunks[name].extend(idx[start:start + size].tolist())
            start += size
        chunks[rest].extend(idx[start:].tolist())
    return {name: sorted(int(i) for i in ids) for name, ids in chunks.items()}
