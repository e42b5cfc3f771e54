"""Hierarchical prototypes: one class prototype and K group prototypes per class.

Saved once to `prototypes.npz` (atomic, under a file lock so parallel shards never race) with a
fingerprint of the guide checkpoint, the training split, the cluster method, K and the feature
transform. A file with another fingerprint is an error, never silently recomputed.
"""
import hashlib
import logging
from pathlib import Path

import numpy as np
from filelock import FileLock
from sklearn.cluster import AgglomerativeClustering, KMeans

from distdiff import DistDiffError
from distdiff.fileio import atomic_path

logger = logging.getLogger(__name__)
CLUSTER_METHODS = ("kmeans", "agglomerative")


def cluster_groups(features, k, method="kmeans", seed=0):
    """Group means [k', D] of one class's features; k' = min(k, n) for small classes."""
    k = min(k, len(features))
    if k == 1:
        return features.mean(axis=0, keepdims=True)
    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    elif method == "agglomerative":  # the authors' code: average linkage
        labels = AgglomerativeClustering(n_clusters=k, linkage="average").fit_predict(features)
    else:
        raise DistDiffError(f"unknown cluster method {method!r}; choose from {CLUSTER_METHODS}")
    return np.stack([features[labels == g].mean(axis=0) for g in range(k)])


def compute_prototypes(features, labels, num_classes, k=3, method="kmeans", seed=0):
    """class_protos [C, D], group_protos [C, K, D] and group_mask [C, K] from unit features.

    The file stores plain means of the class's L2-normalised features; the sampler rescales them
    to unit norm as the authors' code does (--renormalize_prototypes, default on). A class with
    n < K images has n valid groups; the rest are masked out.
    """
    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    dim = features.shape[1]
    class_protos = np.zeros((num_classes, dim), np.float32)
    group_protos = np.zeros((num_classes, k, dim), np.float32)
    group_mask = np.zeros((num_classes, k), bool)
    for c in range(num_classes):
        members = features[labels == c]
        if len(members) == 0:
            raise DistDiffError(f"class index {c} has no training images; cannot build prototypes")
        class_protos[c] = members.mean(axis=0)
        groups = cluster_groups(members, k, method, seed)
        group_protos[c, :len(groups)] = groups
        group_mask[c, :len(groups)] = True
    return class_protos, group_protos, group_mask


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


def save_prototypes(path, class_protos, group_protos, group_mask, class_names, fprint):
    """Write prototypes.npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, class_protos=class_protos, group_protos=group_protos, group_mask=group_mask,
                 class_names=np.array(class_names), fingerprint=np.array(fprint))


def load_prototypes(path, expected_fingerprint=None):
    """Read prototypes.npz into a dict; a fingerprint mismatch is a DistDiffError."""
    with np.load(path, allow_pickle=False) as data:
        protos = {key: data[key] for key in data.files}
    found = str(protos["fingerprint"])
    if expected_fingerprint is not None and found != expected_fingerprint:
        raise DistDiffError(f"{path} was built from another guide checkpoint, split, cluster method "
                            f"or K (fingerprint {found} != {expected_fingerprint}); use a new --out "
                            "or delete the file")
    protos["class_names"] = [str(c) for c in protos["class_names"]]
    return protos


def prepare_prototypes(path, fprint, compute):
    """Load `path` if it exists, else build it with `compute()` -> dict, under an exclusive lock.

    The first shard to arrive computes; the others wait on the lock and then read the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / f".{path.name}.lock"):
        if not path.is_file():
            built = compute()
            save_prototypes(path, built["class_protos"], built["group_protos"], built["group_mask"],
                            built["class_names"], fprint)
            logger.info("prototypes written to %s", path)
    return load_prototypes(path, fprint)
