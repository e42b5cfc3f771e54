"""Prototypes, the energy and one guidance step, checked on small hand-made tensors."""
import logging
import math

import numpy as np
import pytest
import torch

from distdiff import DistDiffError
from distdiff.guidance import direct_step, energy, project, transform_step, unit_prototypes
from distdiff.prototype_store import load_prototypes, save_prototypes
from distdiff.prototypes import compute_prototypes
from distdiff.settings import GUIDED, GuidanceConfig, NONFINITE
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


def test_a_kmeans_seed_mismatch_is_an_error_and_an_unrecorded_seed_a_warning(tmp_path, caplog):
    """k-means' groups depend on its seed, which the fingerprint leaves out (files written before the
    seed was recorded keep their fingerprint): a file of another seed is refused, one without a
    recorded seed is used with a warning."""
    args = (np.zeros((2, 3)), np.zeros((2, 3, 3)), np.ones((2, 3), bool), ["a", "b"], "abc")
    seeded, unrecorded = tmp_path / "seeded.npz", tmp_path / "unrecorded.npz"
    save_prototypes(seeded, *args, kmeans_seed=42)
    save_prototypes(unrecorded, *args)
    assert load_prototypes(seeded, "abc", kmeans_seed=42)["class_names"] == ["a", "b"]
    with pytest.raises(DistDiffError, match="holds the k-means groups of seed 42, not of this run's --seed 7"):
        load_prototypes(seeded, "abc", kmeans_seed=7)
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert load_prototypes(unrecorded, "abc", kmeans_seed=7)["class_names"] == ["a", "b"]
    assert "records no k-means seed" in caplog.text
    load_prototypes(seeded, "abc")  # agglomerative groups (no seed asked): the recorded one is not checked


def test_energy_by_hand():
    f = torch.tensor([[1.0, 0.0]])
    class_p = torch.tensor([[0.0, 1.0]])
    groups = torch.tensor([[[0.6, 0.8], [-1.0, 0.0], [5.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the masked group would be the most similar
    e = energy(f, class_p, groups, mask, lambda_class=1.0, lambda_group=0.5)
    expected = math.sqrt(2) + 0.5 * math.hypot(0.4, 0.8)
    assert torch.allclose(e, torch.tensor([expected]))


def test_transform_step_lowers_the_energy_and_respects_the_radius():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 2, 2)
    lookahead = lambda latents: (latents ** 2).flatten(1).sum(1)  # noqa: E731
    a0, b0 = torch.rand(3, 4, 1, 1), torch.randn(3, 4, 1, 1)
    # One step on (a, b) lowers the energy of the perturbed latent z (1 + a) + b.
    new, status = transform_step(z, lookahead, a0, b0, step_size=0.01, radius=None)
    assert (status == GUIDED).all() and (lookahead(new) < lookahead(z * (1 + a0) + b0)).all()
    # The projection bounds the move from the unguided z (and binds at rho = 10).
    new, status = transform_step(z, lookahead, a0, b0, step_size=10.0, radius=0.2)
    assert (status == GUIDED).all() and 0.19 < (new - z).abs().max() <= 0.2 + 1e-6


def test_direct_step_moves_the_next_latent_by_the_gradient_at_this_one():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 2, 2)

    def step_energy(latents):  # a stand-in DDIM step (z_prev = z / 2) and a quadratic energy of z
        return latents / 2, (latents ** 2).flatten(1).sum(1)
    guided, unguided, status = direct_step(z, step_energy, step_size=0.1)
    assert (status == GUIDED).all() and torch.allclose(unguided, z / 2)
    assert torch.allclose(guided, z / 2 - 0.1 * 2 * z)  # z_{t-1} - rho * dE/dz_t, no projection


def test_nonfinite_energy_keeps_unguided_latent():
    z = torch.randn(2, 4, 2, 2)

    def lookahead(latents):
        e = (latents ** 2).flatten(1).sum(1)
        return torch.stack([e[0], e[1] * float("nan")])
    new, status = transform_step(z, lookahead, torch.rand(2, 4, 1, 1), torch.randn(2, 4, 1, 1), 10.0, 0.2)
    assert status.tolist() == [GUIDED, NONFINITE]
    assert torch.equal(new[1], z[1]) and not torch.equal(new[0], z[0])


def test_unit_prototypes_rescale_class_and_group_means():
    protos = {"class_protos": torch.tensor([[0.3, 0.4]]), "group_protos": torch.tensor([[[0.0, 0.5], [0.0, 0.0]]]),
              "group_mask": torch.tensor([[True, False]])}
    unit_protos = unit_prototypes(protos)
    assert torch.allclose(unit_protos["class_protos"], torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(unit_protos["group_protos"], torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))  # masked: zero


def test_guidance_indices_of_the_two_variants():
    assert GuidanceConfig().indices(50) == [30]
    assert GuidanceConfig(mode="direct").indices(50) == [30, 31]  # the authors' timesteps[50-M : 50-M+P]
    assert GuidanceConfig(repeats=3, interval=5).indices(50) == [30, 35, 40]
    assert GuidanceConfig(mode="none").indices(50) == []


def test_project_is_identity_without_radius():
    z, moved = torch.zeros(1, 2), torch.tensor([[3.0, -3.0]])
    assert torch.equal(project(moved, z, None), moved)
    assert project(moved, z, 0.5).tolist() == [[0.5, -0.5]]


def test_shards_partition_the_blocks_and_limit_covers_classes():
    samples = [(f"c{c}/{i}.png", c) for c in range(3) for i in range(4)]
    items = work_items(samples, ratio=2)
    all_blocks = blocks(items, 5)
    assert blocks(items) == blocks(items, 8)  # ownership blocks of 8 items by default
    owned = [b for s in range(3) for b, _ in shard_blocks(all_blocks, s, 3)]
    assert sorted(owned) == list(range(len(all_blocks)))
    assert {samples[i][1] for i in select_sources(samples, limit=3)} == {0, 1, 2}
    assert resolve_shard(None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert resolve_shard(None, None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(DistDiffError):
        resolve_shard(2, 2, {})


def test_rho_zero_is_the_clamped_perturbation_alone_without_a_backward():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 2, 2)
    a, b = torch.rand(3, 4, 1, 1), torch.randn(3, 4, 1, 1)

    def lookahead(latents):
        raise AssertionError("rho = 0 must not run the look-ahead")
    new, status = transform_step(z, lookahead, a, b, step_size=0.0, radius=0.2)
    assert (status == GUIDED).all() and torch.equal(new, project(z * (1 + a) + b, z, 0.2))


def test_the_landed_offset_step_follows_the_written_rule():
    """distdiff.variants.offset_step (V1/V2 of docs/guidance_variants.md) against the rule written
    out here: d0 = P_r(z(1 + a) + b - z); each step d <- P_r(d - step r g / max|g|) with g the
    gradient of the energy at z + d, per item; a quadratic energy whose gradient differs between
    the clamped and the unclamped point, so taking it at the wrong one fails."""
    from distdiff.variants import offset_step
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 5, generator=gen)
    a, b = torch.rand(3, 4, 1, 1, generator=gen), torch.randn(3, 4, 1, 1, generator=gen)
    target = torch.randn(3, 4, 5, 5, generator=gen) * 3
    r = 0.2

    def quadratic(x):
        return ((x - target) ** 2).flatten(1).sum(1)

    for iters, step in ((1, 1.0), (5, 0.5)):
        d = (z * (1 + a) + b - z).clamp(-r, r)
        for _ in range(iters):
            g = 2 * (z + d - target)
            d = (d - step * r * g / g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)).clamp(-r, r)
        got, status = offset_step(z, quadratic, a, b, r, iters, step)
        assert status.tolist() == [GUIDED] * 3
        torch.testing.assert_close(got, z + d, rtol=0, atol=1e-6)
        assert (got - z).abs().max() <= r + 1e-6 and (quadratic(got) < quadratic(z + (z * (1 + a) + b - z).clamp(-r, r))).all()
    # no step: the clamped noise alone (the paper's rho = 0 latent); from the identity, z itself
    noise = project(z * (1 + a) + b, z, r)
    torch.testing.assert_close(offset_step(z, quadratic, a, b, r, 0, 1.0)[0], noise, rtol=0, atol=0)
    torch.testing.assert_close(offset_step(z, quadratic, a, b, r, 3, 0.0)[0], noise, rtol=0, atol=0)
    zero = torch.zeros_like(a)
    assert torch.equal(offset_step(z, quadratic, zero, zero, r, 0, 1.0)[0], z)


def test_the_landed_variant_needs_transform_guidance_and_a_radius():
    from distdiff import expand_flags
    for extra in (["--radius", "none"], ["--guidance", "direct"]):
        with pytest.raises(DistDiffError, match="--transform_point landed needs --guidance transform and a --radius"):
            expand_flags.parse(["--dataset", "digits", "--transform_point", "landed", *extra])
    cfg = expand_flags.parse(["--dataset", "digits", "--transform_point", "landed", "--guidance_iters", "5",
                              "--offset_step", "0.5"])
    assert (cfg.guidance.transform_point, cfg.guidance.guidance_iters, cfg.guidance.offset_step) == ("landed", 5, 0.5)
    assert any("--step_size (rho) is not used" in note for note in expand_flags.unusual_settings(cfg))
    assert {"transform_point", "guidance_iters", "offset_step", "energy"} <= set(expand_flags.GENERATION_KEYS)
