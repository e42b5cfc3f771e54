"""Prototypes, the energy and one guidance step, checked on small hand-made tensors."""
import math

import numpy as np
import pytest
import torch

from distdiff import DistDiffError
from distdiff.guidance import GuidanceConfig, energy, guide_step, project
from distdiff.prototypes import compute_prototypes, load_prototypes, save_prototypes
from distdiff.shards import blocks, resolve_shard, select_sources, shard_blocks, work_items


def unit(rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_prototype_shapes_and_group_mask_for_small_class():
    rng = np.random.default_rng(0)
    feats = unit(rng.normal(size=(14, 5)))
    labels = np.array([0] * 6 + [1] * 6 + [2] * 2)  # class 2 has fewer images than K=3
    for method in ("kmeans", "agglomerative"):
        cp, gp, mask = compute_prototypes(feats, labels, 3, k=3, method=method)
        assert cp.shape == (3, 5) and gp.shape == (3, 3, 5) and mask.shape == (3, 3)
        assert mask[:2].all() and mask[2].tolist() == [True, True, False]
        np.testing.assert_allclose(cp[1], feats[6:12].mean(0), rtol=1e-5)
        # every group prototype is the mean of a subset, so the groups' weighted mean is the class mean
        assert np.allclose(gp[2, :2].mean(0), cp[2], atol=1e-6)


def test_fingerprint_mismatch_is_an_error(tmp_path):
    path = tmp_path / "prototypes.npz"
    save_prototypes(path, np.zeros((2, 3)), np.zeros((2, 3, 3)), np.ones((2, 3), bool), ["a", "b"], "abc")
    assert load_prototypes(path, "abc")["class_names"] == ["a", "b"]
    with pytest.raises(DistDiffError, match="fingerprint abc != xyz"):
        load_prototypes(path, "xyz")


def test_energy_by_hand():
    f = torch.tensor([[1.0, 0.0]])
    class_p = torch.tensor([[0.0, 1.0]])
    groups = torch.tensor([[[0.6, 0.8], [-1.0, 0.0], [5.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the masked group would be the most similar
    e = energy(f, class_p, groups, mask, lambda_class=1.0, lambda_group=0.5)
    expected = math.sqrt(2) + 0.5 * math.hypot(0.4, 0.8)
    assert torch.allclose(e, torch.tensor([expected]))


def test_guide_step_lowers_a_quadratic_energy_and_respects_radius():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 2, 2)
    lookahead = lambda latents: (latents ** 2).flatten(1).sum(1)  # noqa: E731
    a0, b0 = torch.rand(3, 4, 1, 1), torch.randn(3, 4, 1, 1)
    # Transform: one step on (a, b) lowers the energy of the perturbed latent z (1 + a) + b.
    new, ok = guide_step(z, lookahead, GuidanceConfig(mode="transform", step_size=0.01, radius=None), a0, b0)
    assert ok.all() and (lookahead(new) < lookahead(z * (1 + a0) + b0)).all()
    # Direct: one step on z lowers the energy of z itself.
    new, ok = guide_step(z, lookahead, GuidanceConfig(mode="direct", step_size=0.05, radius=None))
    assert ok.all() and (lookahead(new) < lookahead(z)).all()
    for mode in ("transform", "direct"):  # the projection bounds the move from the unguided z
        new, ok = guide_step(z, lookahead, GuidanceConfig(mode=mode, step_size=10.0, radius=0.2), a0, b0)
        assert ok.all() and (new - z).abs().max() <= 0.2 + 1e-6 and (new - z).abs().max() > 0.19


def test_nonfinite_energy_keeps_unguided_latent():
    z = torch.randn(2, 4, 2, 2)
    def lookahead(latents):
        e = (latents ** 2).flatten(1).sum(1)
        return torch.stack([e[0], e[1] * float("nan")])
    new, ok = guide_step(z, lookahead, GuidanceConfig(mode="direct"))
    assert ok.tolist() == [True, False]
    assert torch.equal(new[1], z[1]) and not torch.equal(new[0], z[0])


def test_project_is_identity_without_radius():
    z, moved = torch.zeros(1, 2), torch.tensor([[3.0, -3.0]])
    assert torch.equal(project(moved, z, None), moved)
    assert project(moved, z, 0.5).tolist() == [[0.5, -0.5]]


def test_shards_partition_the_blocks_and_limit_covers_classes():
    samples = [(f"c{c}/{i}.png", c) for c in range(3) for i in range(4)]
    items = work_items(samples, ratio=2)
    all_blocks = blocks(items, 5)
    owned = [b for s in range(3) for b, _ in shard_blocks(all_blocks, s, 3)]
    assert sorted(owned) == list(range(len(all_blocks)))
    assert {samples[i][1] for i in select_sources(samples, limit=3)} == {0, 1, 2}
    assert resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert resolve_shard(None, None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(DistDiffError):
        resolve_shard(2, 2, {})
