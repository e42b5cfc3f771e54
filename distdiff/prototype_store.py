"""prototypes.npz: written once (atomic, under a file lock so parallel shards never race) with a
fingerprint of the guide checkpoint, the training split, the cluster method, K and the feature
transform, and, for k-means, the seed of its initialisation. A file with another fingerprint or
k-means seed is an error, never silently recomputed.
"""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from distdiff import DistDiffError
from distdiff.fileio import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrototypeConfig:
    """How the prototypes are made (K = 3 as the authors' launcher; the clustering is this project's choice) and the file
    that holds them."""
    path: str | None = None   # None: <out>/prototypes.npz
    cluster: str = "kmeans"   # group prototypes: k-means (this project's choice), or the authors' average linkage
    num_groups: int = 3       # K group prototypes per class


def fingerprint(guide_ckpt, train_files, method, k, transform="guide"):
    """Hash of the guide checkpoint bytes, the training file list, the cluster method, K and the
    feature transform."""
    digest = hashlib.sha256()
    with open(guide_ckpt, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update("\n".join(sorted(str(p) for p in train_files)).encode())
    digest.update(f"|{method}|{k}".encode() + (b"" if transform == "guide" else f"|{transform}".encode()))
    return digest.hexdigest()[:20]


def save_prototypes(path, class_protos, group_protos, group_mask, class_names, fprint, kmeans_seed=None):
    """Write prototypes.npz atomically (with the k-means seed, where k-means made the groups)."""
    seed = {} if kmeans_seed is None else {"kmeans_seed": np.array(kmeans_seed)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, class_protos=class_protos, group_protos=group_protos, group_mask=group_mask,
                 class_names=np.array(class_names), fingerprint=np.array(fprint), **seed)


def load_prototypes(path, expected_fingerprint=None, kmeans_seed=None):
    """Read prototypes.npz into a dict; a fingerprint or k-means seed mismatch is a DistDiffError.

    The seed is not in the fingerprint, so that files written before it was recorded keep their
    fingerprint: such a file is used as it is, with a warning that its seed cannot be checked."""
    with np.load(path, allow_pickle=False) as data:
        protos = {key: data[key] for key in data.files}
    found = str(protos["fingerprint"])
    if expected_fingerprint is not None and found != expected_fingerprint:
        raise DistDiffError(f"{path} was built from another guide checkpoint, split, cluster method "
                            f"or K (fingerprint {found} != {expected_fingerprint}); use a new --out "
                            "or delete the file")
    if kmeans_seed is not None and "kmeans_seed" not in protos:
        logger.warning("%s records no k-means seed (written before seeds were recorded): its groups are used "
                       "without checking them against --seed %d", path, kmeans_seed)
    elif kmeans_seed is not None and int(protos["kmeans_seed"]) != kmeans_seed:
        raise DistDiffError(f"{path} holds the k-means groups of seed {int(protos['kmeans_seed'])}, not of this "
                            f"run's --seed {kmeans_seed}; use a new --out or --prototypes path, or delete the file")
    protos["class_names"] = [str(c) for c in protos["class_names"]]
    return protos


def prepare_prototypes(path, fprint, compute, kmeans_seed=None):
    """Load `path` if it exists, else build it with `compute()` -> dict, under an exclusive lock.

    The first shard to arrive computes; the others wait on the lock and then read the file.
    `kmeans_seed`: the seed of k-means' initialisation where k-means makes the groups, else None.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / f".{path.name}.lock"):
        if not path.is_file():
            built = compute()
            save_prototypes(path, built["class_protos"], built["group_protos"], built["group_mask"],
                            built["class_names"], fprint, kmeans_seed)
            logger.info("prototypes written to %s", path)
    return load_prototypes(path, fprint, kmeans_seed)
