"""Fidelity to the authors' code: their command line parses and means the same, `--preset authors`
sets their values, and the guided latents equal the authors' update written out independently
here from their generate_data.py (not imported), to float tolerance."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import AUTHORS_ARGS, DIGITS, run_main
from distdiff import DistDiffError, expand_flags
from distdiff import expansion
from distdiff import generation as ex
from distdiff.registry import get_dataset

# The authors' scripts/exps/expand_diff.sh argument list for EXPAND_NUM=5 SPLIT=0, as they wrote it.



def parse(*argv):
    """expand_distdiff.py's resolved flags (the namespace its ExpandConfig is made from)."""
    return expand_flags.parse_namespace([str(a) for a in argv])


def test_authors_argument_list_parses_to_the_same_settings():
    args = parse(*AUTHORS_ARGS)
    assert (args.guidance, args.guide_arch, args.dataset, args.model) == \
        ("transform", "resnet50", "caltech-101", "CompVis/stable-diffusion-v1-4")
    assert args.out == "data/caltech-101_expansion/save/distdiff_batch_5x" and args.gradient_checkpointing
    assert (args.num_groups, args.batch_size, args.strength, args.expand_ratio) == (3, 1, 0.5, 5)
    assert (args.guidance_step, args.lookahead_steps, args.cfg_scale, args.radius, args.step_size) == \
        (20, 2, 7.5, 0.2, 10.0)
    assert args.guide_ckpt.endswith("resnet50_unpretrained_lr0.1/seed1/model_best.pth.tar")
    assert (args.total_split, args.split) == (4, 0)
    guidance = expand_flags.guidance_config(args)
    assert (guidance.lambda_class, guidance.lambda_group) == (1.0, 1.0)
    only_class = expand_flags.guidance_config(parse("--dataset", "digits", "--optimize_targets",
                                                                 "global_prototype", "--gs", "2"))
    assert (only_class.lambda_class, only_class.lambda_group) == (2.0, 0.0)
    assert parse("--dataset", "digits", "--guidance_type", "direct_guidance").guidance == "direct"
    with pytest.raises(DistDiffError, match="--optimize_targets 'global'"):
        expand_flags.guidance_config(parse("--dataset", "digits", "--optimize_targets", "global"))


def test_preset_authors_sets_their_values_and_command_line_flags_win():
    args = parse("--dataset", "digits", "--preset", "authors")
    assert (args.cluster, args.num_groups, args.normalize_features, args.renormalize_prototypes) == \
        ("agglomerative", 3, False, True)
    assert (args.guide_input, args.framing, args.shared_posterior, args.start_rule, args.prompts) == \
        ("authors", "random", True, "authors", "authors")
    assert args.precision == "auto"  # fp16 on CUDA, as theirs (distdiff.devices.resolve_precision)
    assert args.shared_prompt and not parse("--dataset", "digits").shared_prompt  # one LE sentence per source
    assert (args.guide_precision, args.encode_precision) == ("pipeline", "fp32")  # their fp16 guide, fp32 encoders
    # The preset's expansion takes the preset's guide (train_original.py --preset authors), by default.
    assert "resnet_small_unpretrained_lr0.1_resize-squash_preset-authors/seed1/model_best" in args.guide_ckpt
    assert "unpretrained_lr0.1/seed1/model_best" in parse("--dataset", "digits").guide_ckpt
    assert parse("--dataset", "digits", "--preset", "authors", "--guidance", "direct").normalize_features  # theirs
    assert parse("--dataset", "digits", "--preset", "authors", "--cluster", "kmeans").cluster == "kmeans"
    project = parse("--dataset", "digits")
    assert (project.cluster, project.normalize_features, project.guide_input, project.framing) == \
        ("kmeans", True, "guide", "center")


def test_their_prompt_templates():
    caltech, dtd, digits = get_dataset("caltech-101"), get_dataset("dtd"), get_dataset("digits")
    assert caltech.prompt("Faces_easy", "authors") == "a photo of a Faces easy."
    assert caltech.prompt("Faces_easy") == "a photo of a Faces easy"
    assert dtd.prompt("banded", "authors") == "banded texture."
    assert digits.prompt("3", "authors") == digits.prompt("3")  # they have none for digits: the project's


# ---------------------------------------------------------------------------
# The guided latent, against the authors' update written out independently
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samplers(tiny_pipe, random_guide):
    """Transform and direct samplers configured by --preset authors, on the tiny digits pipeline."""
    from distdiff.pipeline import load_pipeline
    torch.manual_seed(0)
    protos = {"class_protos": torch.randn(10, 128).numpy(), "group_protos": torch.randn(10, 3, 128).numpy(),
              "group_mask": np.ones((10, 3), bool)}
    out = {}
    for mode in ("transform", "direct"):
        args = parse("--dataset", "digits", "--preset", "authors", "--guidance", mode, "--num_steps", "10",
                     "--guidance_step", "4", "--record_energy", "False")
        pipe = load_pipeline(tiny_pipe, torch.device("cpu"))
        guide, guide_input, _ = ex.load_guide(random_guide, 10, torch.device("cpu"), args.guide_input)
        prompts = ex.class_prompts(get_dataset("digits"), list(DIGITS), args.prompts)
        out[mode] = ex.build_sampler(pipe, guide, guide_input, protos, prompts, expand_flags.sample_config(args),
                                     expand_flags.guidance_config(args), torch.device("cpu"))
    return {**out, "protos": protos, "guide": out["transform"].guide}


def authors_score(sampler, protos, x0, label, features_normalised):
    """Their energy of one look-ahead step: decode, bicubic to the guide's size (no clamp, crop or
    normalisation), raw (transform) or unit (direct) features, unit prototypes, batch mean."""
    images = sampler.pipe.vae.decode(x0 / sampler.pipe.vae.config.scaling_factor).sample
    x = F.interpolate(images, size=(32, 32), mode="bicubic")
    f = sampler.guide.forward_head(sampler.guide.forward_features(x), pre_logits=True)
    if features_normalised:
        f = f / f.norm(dim=1, keepdim=True)
    protos = {k: torch.as_tensor(v) for k, v in protos.items()}
    p_class = protos["class_protos"][label] / protos["class_protos"][label].norm()
    p_groups = protos["group_protos"][label] / protos["group_protos"][label].norm(dim=1, keepdim=True)
    nearest = p_groups[(f @ p_groups.T).argmax(1)]
    return (f - p_class).norm(dim=1).mean() + (f - nearest).norm(dim=1).mean()


def authors_step(sampler, z, t, embeds):
    eps_u, eps_c = sampler.pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([embeds[:, 0], embeds[:, 1]])
                                     ).sample.chunk(2)
    return sampler.scheduler.step(eps_u + 7.5 * (eps_c - eps_u), t, z)


def test_transform_guidance_equals_the_authors_update(samplers):
    sampler = samplers["transform"]
    torch.manual_seed(1)
    z, a, b, label = torch.randn(1, 4, 2, 2), torch.rand(1, 4, 1, 1), torch.randn(1, 4, 1, 1), 3
    index = sampler.guidance_at[0]
    embeds = sampler.prompt_embeds[[sampler.prompt_index[label][0]]]
    draws = [SimpleNamespace(a=a, b=b)]
    ours, _ = sampler._transform(z.clone(), index, embeds, torch.tensor([label]), draws)
    # Theirs: perturb, P=2 look-ahead steps with CFG, raw features, average over P, one gradient
    # step of rho on (a, b), transform z, clamp to the L-inf ball of 0.2 around z.
    a_var, b_var = a.clone().requires_grad_(), b.clone().requires_grad_()
    with torch.enable_grad():
        latents, score = z * (1 + a_var) + b_var, 0
        for t in sampler.timesteps[index:index + 2]:
            out = authors_step(sampler, latents, t, embeds)
            score = score + authors_score(sampler, samplers["protos"], out.pred_original_sample, label, False)
            latents = out.prev_sample
        grad_a, grad_b = torch.autograd.grad(score / 2, [a_var, b_var])
    theirs = (z * (1 + (a - 10.0 * grad_a)) + (b - 10.0 * grad_b)).clamp(z - 0.2, z + 0.2)
    # The gradient step must move the result well beyond the tolerance (vanishing gradients would
    # make both sides the clamped random perturbation alone, equal whatever the energy).
    no_step = (z * (1 + a) + b).clamp(z - 0.2, z + 0.2)
    assert (theirs - no_step).abs().max() > 100 * 1e-5
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_direct_guidance_equals_the_authors_update(samplers):
    sampler = samplers["direct"]
    torch.manual_seed(2)
    z, label = torch.randn(1, 4, 2, 2), 7
    embeds = sampler.prompt_embeds[[sampler.prompt_index[label][0]]]
    ours = z.clone()
    for index in sampler.guidance_at:  # both guided indices, as the sampler's loop does
        ours = sampler._direct(ours.clone(), index, embeds, torch.tensor([label]))[0]
    # Theirs, at each of the P=2 timesteps: one step with CFG, unit features, energy not divided by
    # P, gradient with respect to z_t subtracted (rho = 10) from z_{t-1}, no projection.
    theirs, unguided = z.clone(), z.clone()
    for t in sampler.timesteps[sampler.guidance_at[0]:sampler.guidance_at[0] + 2]:
        with torch.enable_grad():
            z_t = theirs.clone().requires_grad_()
            out = authors_step(sampler, z_t, t, embeds)
            score = authors_score(sampler, samplers["protos"], out.pred_original_sample, label, True)
            (grad,) = torch.autograd.grad(score, [z_t])
        theirs = (out.prev_sample - 10.0 * grad).detach()
        with torch.no_grad():
            unguided = authors_step(sampler, unguided, t, embeds).prev_sample
    # The gradient steps must move the result well beyond the tolerance (with vanishing gradients
    # both sides would be plain DDIM steps, equal whatever the energy).
    assert (theirs - unguided).abs().max() > 100 * 1e-5
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_prototypes_equal_the_authors_recipe(tmp_path, digits_ready, random_guide):
    from sklearn.cluster import AgglomerativeClustering
    from torchvision.transforms import v2
    spec, device = get_dataset("digits"), torch.device("cpu")
    sources = expansion.load_sources(spec)
    guide, _, meta = ex.load_guide(random_guide, 10, device, "authors")
    ours = ex.build_prototypes(tmp_path / "p.npz", spec, sources, guide, meta, device, random_guide,
                               "agglomerative", 3, 0, "authors")
    # Theirs: Resize((size, size)) squash, ImageNet normalisation, unit features, average-linkage
    # clusters, means; re-normalised at use (compared after normalising both).
    transform = v2.Compose([v2.ToImage(), v2.Resize((32, 32)), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(meta["mean"], meta["std"])])
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in sources.samples])
    with torch.no_grad():
        f = F.normalize(guide.forward_head(guide.forward_features(images), pre_logits=True), dim=1).numpy()
    labels = np.array(sources.targets)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    for c in range(10):
        members = f[labels == c]
        np.testing.assert_allclose(unit(ours["class_protos"][c]), unit(members.mean(0)), atol=1e-5)
        groups = AgglomerativeClustering(n_clusters=3, linkage="average").fit_predict(members)
        theirs = np.stack([unit(members[groups == g].mean(0)) for g in range(3)])
        # Cluster labels are arbitrary: pair each of ours with its nearest of theirs (whole vectors),
        # which must be a one-to-one matching, then compare the pairs.
        mine = unit(ours["group_protos"][c])
        match = [int(np.argmin(np.linalg.norm(theirs - row, axis=1))) for row in mine]
        assert sorted(match) == [0, 1, 2], match
        np.testing.assert_allclose(mine, theirs[match], atol=1e-5)


# ---------------------------------------------------------------------------
# Framing, shared posterior, prompts from a file, offset noise, first copy
# ---------------------------------------------------------------------------

def test_framing_keeps_the_aspect_ratio_and_random_crops_are_seeded_per_source():
    from distdiff.sampler import CROP_STREAM, frame, item_generator
    ramp = np.linspace(0, 255, 60).round().astype(np.uint8)
    wide = Image.fromarray(np.tile(ramp, (40, 1))).convert("RGB")  # 60x40, black at the left, white at the right
    center = frame(wide, 32, "center")
    assert center.shape == (3, 32, 32)
    # Shorter side 40 -> 32 (width 48), then the middle 32 columns: a centred ramp is antisymmetric,
    # and it spans less than the full range (a squash would keep the black and white ends).
    assert torch.allclose(center, center.flip(-1).neg(), atol=0.02) and center.max() < 0.75
    crops = [frame(wide, 32, "random", item_generator(0, i, CROP_STREAM)) for i in range(6)]
    again = frame(wide, 32, "random", item_generator(0, 0, CROP_STREAM))
    assert torch.equal(crops[0], again) and len({c[0, 0, 0].item() for c in crops}) > 1
    assert frame(wide, 32, "squash").shape == (3, 32, 32)


def test_draw_options_leave_the_other_draws_unchanged():
    from distdiff.sampler import OFFSET_NOISE, draw_item, item_generator
    plain = draw_item(item_generator(0, 1, 2), (4, 2, 2), 1, 1, False)
    extra = draw_item(item_generator(0, 1, 2), (4, 2, 2), 1, num_prompts=5, offset_noise=True)
    assert torch.equal(plain.latent_eps, extra.latent_eps) and torch.equal(plain.a, extra.a)
    offset = extra.noise - plain.noise
    assert torch.allclose(offset, offset[:, :1, :1].expand_as(offset))  # one constant per channel
    assert 0 < offset.abs().max() < 5 * OFFSET_NOISE and 0 <= extra.prompt < 5


def test_prompt_file_and_first_image_index(tmp_path, tiny_pipe, random_guide, digits_ready):
    table = {d: [f"a handwritten {d}", f"the digit {d} in ink"] for d in DIGITS}
    (tmp_path / "le.json").write_text(json.dumps(table))
    prompts = ex.class_prompts(get_dataset("digits"), list(DIGITS), prompt_file=tmp_path / "le.json")
    assert prompts[3] == ["a handwritten 3", "the digit 3 in ink"]
    with pytest.raises(DistDiffError, match="no sentences for class"):
        (tmp_path / "bad.json").write_text(json.dumps({"0": ["zero"]}))
        ex.class_prompts(get_dataset("digits"), list(DIGITS), prompt_file=tmp_path / "bad.json")
    import pickle  # the authors' data/<dataset>_le.pkl: a pickled dict, numpy arrays of sentences allowed
    import numpy as np
    (tmp_path / "le.pkl").write_bytes(pickle.dumps({d: np.array(table[d]) for d in DIGITS}))
    assert ex.class_prompts(get_dataset("digits"), list(DIGITS), prompt_file=tmp_path / "le.pkl") == prompts
    out = tmp_path / "out"
    run_main("expand_distdiff", "--dataset", "digits", "--model", tiny_pipe, "--guide_ckpt", random_guide,
             "--out", out, "--expand_ratio", "3", "--first_image_index", "1", "--limit", "2", "--num_steps", "10",
             "--guidance_step", "4", "-le", "--prompt_file", tmp_path / "le.json", "--offset_noise", "--threads", "1")
    assert sorted(p.name.split("_expand_")[1] for p in out.rglob("*.png")) == ["1.png", "1.png", "2.png", "2.png"]


def test_authors_training_command_lines_parse_to_the_same_settings(tmp_path):
    """Their train_original.sh / train_expand.sh calls of train.py and
    train_expanded_data_concat_original.py, with train_original.py / train_expand.py in their place."""
    import argparse

    from distdiff.config import dataset_section, parse_args
    from distdiff.options import add_train_expand_flags
    from distdiff.training import TrainConfig
    run = "checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed2"
    argv = ["-a", "resnet50", "-d", "caltech-101", "--checkpoint", run, "--data_dir", "data", "--manualSeed", "2",
            "--train-batch-size", "64", "--lr", "0.1", "--val-batch-size", "64", "--epochs", "100"]
    parser = add_train_expand_flags(argparse.ArgumentParser())
    cfg = TrainConfig.from_args(parse_args(parser, argv, config=dataset_section("train")))
    assert (cfg.arch, cfg.dataset, cfg.run_dir, cfg.data_dir, cfg.seed) == ("resnet50", "caltech-101", run, "data", 2)
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.lr, cfg.epochs, cfg.pretrained) == (64, 64, 0.1, 100, False)
    pretrained = parse_args(parser, [*argv, "--pretrained"], config=dataset_section("train"))
    assert pretrained.pretrained is True
    expanded = parse_args(parser, [*argv, "--data_expanded_dir", "data/caltech-101_expansion/save/distdiff_batch_5x"],
                          config=dataset_section("train"))
    assert expanded.expanded_dir == ["data/caltech-101_expansion/save/distdiff_batch_5x"]


def test_shared_prompt_gives_every_copy_of_a_source_one_sentence():
    """The authors' language enhancement draws one sentence per source image; the project's
    default draws one per copy. Checked on the draws handed to the sampler (a stand-in)."""
    from distdiff.numerics import LossScale
    from distdiff.settings import SampleConfig
    from distdiff.shards import work_items

    class Recorder:
        guidance_cfg, dtype = SimpleNamespace(mode="none"), torch.float32

        def __init__(self, shared):
            self.sample_cfg, self.seen, self.loss_scale = SampleConfig(shared_prompt=shared), [], LossScale()

        def prompts_per_class(self, label):
            return 5

        def latent_shape(self):
            return (4, 2, 2)

        def sample(self, mean, std, labels, draws, observer=None):
            self.seen += [d.prompt for d in draws]
            return torch.zeros(len(draws), 3, 2, 2), torch.zeros(len(draws), dtype=torch.long)

    latents = SimpleNamespace(get=lambda index: (torch.zeros(4, 2, 2), torch.ones(4, 2, 2)))
    items = work_items([(f"c/{i}.png", 0) for i in range(6)], ratio=4)  # 6 sources x 4 copies
    for shared in (True, False):
        sampler = Recorder(shared)
        ex.sample_block(sampler, latents, items, seed=0, repeats=1)
        per_source = [set(sampler.seen[4 * i:4 * i + 4]) for i in range(6)]
        if shared:
            assert all(len(p) == 1 for p in per_source) and len(set().union(*per_source)) > 1
        else:
            assert any(len(p) > 1 for p in per_source)


@pytest.mark.slow
def test_the_authors_training_argument_lists_run(tmp_path, digits_ready):
    """Their scripts/exps/train_original.sh and train_expand.sh lines, with train_original.py and
    train_expand.py in place of train.py and train_expanded_data_concat_original.py, run as they
    are (MODEL=resnet_small, DATASET=digits); only size knobs are added after them."""
    import shutil

    run = tmp_path / "checkpoint/digits/resnet_small_unpretrained_lr0.1/seed1"
    theirs = ["-a", "resnet_small", "-d", "digits", "--checkpoint", run, "--data_dir", digits_ready.root.parent,
              "--manualSeed", "1", "--train-batch-size", "64", "--lr", "0.1", "--val-batch-size", "64", "--epochs", "100"]
    knobs = ["--epochs", "2", "--threads", "1", "--device", "cpu"]
    assert run_main("train_original", *theirs, *knobs)["epochs"] == 2
    assert yaml.safe_load((run / "results.yaml").read_text())["best_accuracy"] > 0  # the key their parse_logs reads
    expanded = tmp_path / "data/digits_expansion/distdiff_x5"
    shutil.copytree(digits_ready.root / "train", expanded)
    retrain = tmp_path / "checkpoint/digits/resnet_small_unpretrained_distdiff_x5_lr0.1/seed1"
    their_expand = ["-d", "digits", "--checkpoint", retrain, "--data_dir", digits_ready.root.parent, "-a", "resnet_small",
                    "--manualSeed", "1", "--data_expanded_dir", expanded, "--train-batch-size", "64", "--lr", "0.1",
                    "--val-batch-size", "64", "--epochs", "100"]
    with pytest.raises(DistDiffError, match="not written by expand_distdiff.py"):  # a copy, not an expansion
        run_main("train_expand", *their_expand, *knobs)
    assert run_main("train_expand", *their_expand, *knobs, "--allow_partial")["n_train"] == 60  # 30 + 30 "expanded"


def test_a_sampler_keeps_its_own_scheduler_and_leaves_the_pipes_alone(samplers):
    sampler = samplers["transform"]
    assert sampler.scheduler is not sampler.pipe.scheduler and len(sampler.timesteps) == 10
    assert sampler.pipe.scheduler.num_inference_steps is None  # never set on the pipe's own


def test_the_authors_car_names_put_the_year_first():
    """Their Stanford Cars loader moves the model year to the front of each class name; with
    --prompts authors the prompts do too, and the project's prompts keep torchvision's names."""
    from distdiff.registry import get_dataset, year_first
    cars = get_dataset("stanford_cars")
    assert cars.prompt("AM_General_Hummer_SUV_2000", "authors") == "a photo of a 2000 AM General Hummer SUV."
    assert cars.prompt("AM_General_Hummer_SUV_2000") == "a photo of a AM General Hummer SUV 2000, a type of car"
    assert year_first("Ram C/V Cargo Van Minivan 2012") == "2012 Ram C/V Cargo Van Minivan"
    assert year_first("no year here") == "no year here" and year_first("2012") == "2012"
    assert get_dataset("dtd").prompt("banded", "authors") == "banded texture."  # others: their template only
