"""Hierarchical prototypes: one class prototype and K group prototypes per class (stored by
distdiff.prototype_store)."""
import numpy as np

from distdiff import DistDiffError

CLUSTER_METHODS = ("kmeans", "agglomerative")


def cluster_groups(features, k, method="kmeans", seed=0):
    """Group means [k', D] of one class's features; k' = min(k, n) for small classes."""
    from sklearn.cluster import AgglomerativeClustering, KMeans  # 1 s to import: only when clustering

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
