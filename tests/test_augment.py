"""--aug: every choice trains one tiny epoch and changes training, per-image augmentations sit
where their input type is, GridMask masks the fraction its docstring states, CutMix runs resume
exactly, both training scripts take the flag, and a bad name is a one-line error."""
import argparse

import pytest
import torch
import yaml
from torchvision import tv_tensors
from torchvision.transforms import v2

import distdiff.engine as engine
from distdiff import DistDiffError
from conftest import read_summary as summary
from conftest import run_main
from distdiff.augment import AUGMENTATIONS, GridMask
from distdiff.config import dataset_section, parse_args
from distdiff.datasets import train_transform
from distdiff.options import add_train_flags
from distdiff.training import TrainConfig, train_classifier

QUICK = ["--batch_size", "8", "--threads", "1", "--epochs", "1"]  # 4 steps on the 30-image 3-shot set


def train_args(out, *extra):
    """train_original.py's resolved config (digits YAML applied), built in-process."""
    parser = add_train_flags(argparse.ArgumentParser())
    args = parse_args(parser, ["digits", "--output", str(out), *QUICK, *extra], config=dataset_section("train"))
    return TrainConfig.from_args(args)


def run_dir(out, aug, exp=""):
    name = "resnet_small_unpretrained" + (f"_{exp}" if exp else "") + "_lr0.1"
    return out / "digits" / (name if aug == "default" else f"{name}_aug-{aug}") / "seed1"


@pytest.fixture(scope="module")
def default_loss(tmp_path_factory, digits_ready):
    """Epoch-1 training loss of the plain recipe (same seed and data order as every aug run)."""
    out = tmp_path_factory.mktemp("default")
    train_classifier(train_args(out))
    return summary(run_dir(out, "default"))[0]["train_loss"]


# Every augmentation trains one epoch in the slow tier (each run is about a second, plus the shared reference).
@pytest.mark.parametrize("aug", [pytest.param(a, marks=pytest.mark.slow)
                                 for a in AUGMENTATIONS])
def test_every_aug_trains_one_epoch(tmp_path, default_loss, aug):
    results = train_classifier(train_args(tmp_path, "--aug", aug))
    run = run_dir(tmp_path, aug)  # the suffix appears only for non-default augs
    assert results["epochs"] == 1 and (run / "results.json").is_file()
    assert yaml.safe_load((run / "args.yaml").read_text())["aug"] == aug
    loss = summary(run)[0]["train_loss"]
    # Same seed and batch order: only the augmentation can change the loss.
    assert (loss == default_loss) == (aug == "default"), (aug, loss, default_loss)


def test_per_image_augs_sit_where_their_input_type_is():
    def kinds(aug):
        return [type(t) for t in train_transform(32, 36, 15.0, False, split=True, aug=aug, interpolation="bilinear")[1].transforms]
    for aug, cls in (("autoaug", v2.AutoAugment), ("randaug", v2.RandAugment)):
        assert kinds(aug).index(cls) < kinds(aug).index(v2.ToDtype), aug  # uint8 ops
    for aug, cls in (("randerasing", v2.RandomErasing), ("cutout", v2.RandomErasing), ("gridmask", GridMask)):
        assert kinds(aug).index(cls) > kinds(aug).index(v2.Normalize), aug  # fill 0 = the mean
    # their cutout: torchvision's RandomErasing() with its defaults, which randerasing spells out
    cutout = train_transform(32, 36, 15.0, False, split=True, aug="cutout", interpolation="bilinear")[1].transforms[-1]
    default = v2.RandomErasing()
    assert (cutout.p, cutout.scale, cutout.ratio, cutout.value) == (default.p, default.scale, default.ratio, default.value)
    for aug in ("mixup", "cutmix"):  # batch-level: the per-image tail is the plain one
        assert kinds(aug) == kinds("default")


def expected_masked_fraction(grid):
    """Exact expectation of GridMask's masked pixel fraction, with the integer rounding of s."""
    units = range(grid.d_min, grid.d_max + 1)
    return grid.p * sum((grid.block_side(d) / d) ** 2 for d in units) / len(units)


@pytest.mark.parametrize("ratio,p", [(0.6, 1.0), (0.5, 0.5)])
def test_gridmask_masks_the_documented_fraction(ratio, p):
    torch.manual_seed(0)
    grid = GridMask(d_min=8, d_max=32, ratio=ratio, p=p)
    image = tv_tensors.Image(torch.ones(3, 32, 32))
    draws = [grid(image) for _ in range(3000)]
    assert isinstance(draws[0], tv_tensors.Image)
    assert all(torch.equal(d[0] == 0, d[2] == 0) for d in draws[:50])  # one mask for all channels
    masked = torch.stack([(d[0] == 0).float().mean() for d in draws]).mean().item()
    assert abs(masked - expected_masked_fraction(grid)) < 0.01, masked
    assert abs(masked - p * (1 - ratio) ** 2) < 0.02, masked  # the docstring's p (1 - r)^2


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of an epoch."""


@pytest.mark.slow
def test_cutmix_run_resumes_exactly(tmp_path, digits_ready, monkeypatch):
    flags = ("--aug", "cutmix", "--epochs", "3")
    train_classifier(train_args(tmp_path / "straight", *flags))
    real_evaluate, calls = engine.evaluate, []

    def crash_in_epoch_two(*args, **kwargs):  # val, test per epoch: call 3 is epoch 2's val
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(engine, "evaluate", crash_in_epoch_two)
    with pytest.raises(Killed):
        train_classifier(train_args(tmp_path / "killed", *flags))
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    assert len(summary(run_dir(tmp_path / "killed", "cutmix"))) == 1
    train_classifier(train_args(tmp_path / "killed", *flags))  # resumes from last.pt after epoch 1
    resumed, straight = (summary(run_dir(tmp_path / d, "cutmix")) for d in ("killed", "straight"))
    key = [(r["train_loss"], r["train_acc"], r["test_acc"]) for r in straight]
    assert [(r["train_loss"], r["train_acc"], r["test_acc"]) for r in resumed] == key


@pytest.mark.slow
def test_train_expand_takes_aug(tmp_path, digits_ready):
    # The 3-shot train split doubles as a stand-in expanded set (same class folders; not an
    # expansion, so --allow_partial).
    run_main("train_expand", "digits", "--exp", "copy", "--expanded_dir", digits_ready.split_dir("train"),
             "--aug", "mixup", "--output", tmp_path, "--allow_partial", *QUICK)
    run = run_dir(tmp_path, "mixup", exp="copy")
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["aug"] == "mixup" and args["n_train"] == 60 and (run / "results.json").is_file()


def test_unknown_aug_is_refused_listing_the_choices(tmp_path, digits_ready):
    with pytest.raises(DistDiffError) as err:  # argparse's own choices check, one line, before any work
        run_main("train_original", "digits", "--aug", "mixupp", "--output", tmp_path, *QUICK)
    assert "invalid choice: 'mixupp'" in str(err.value) and "cutmix" in str(err.value)
    assert not any(tmp_path.iterdir())
    assert not any(tmp_path.iterdir())  # no run dir left behind


def test_the_authors_cutmix_mixes_each_image_by_box_area_with_probability_one_half():
    """cutmix_authors: per image, up to 2 boxes with p 0.5 each. With one box the target's weight
    on the partner is exactly the pixels that came from it; a second box updates the target
    multiplicatively (theirs: lb * lam + lb2 * (1 - lam)), so targets stay distributions."""
    from distdiff.augment import SampleCutMix, batch_transform
    torch.manual_seed(0)
    images = torch.arange(4.0)[:, None, None, None].expand(4, 3, 16, 16).contiguous()  # image k: all k
    labels = torch.arange(4)
    for _ in range(20):
        mixed, targets = SampleCutMix(4, num_mix=1)(images, labels)
        for i in range(4):
            share = torch.stack([(mixed[i, 0] == k).float().mean() for k in range(4)])
            assert torch.allclose(targets[i], share, atol=1e-6)  # the target is the pixels' origin
    untouched = 0
    for _ in range(50):
        mixed, targets = batch_transform("cutmix_authors", 4)(images, labels)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        untouched += int((mixed == images).flatten(1).all(1).sum())
    assert 0.20 < untouched / 200 < 0.45  # no box: (1 - 0.5)^2 = 0.25, plus boxes from the image itself


def test_under_the_authors_preset_autoaug_randaug_and_cutout_are_not_applied_as_in_their_code():
    """Their train_transform.py sets AutoAugment/RandAugment/Cutout on a ConcatDataset attribute
    that no loader reads; --preset authors reproduces that, the default applies them."""
    from distdiff.recipe import TrainConfig
    from distdiff.training import applied_aug, build_transforms
    for aug in ("autoaug", "randaug", "cutout"):
        assert applied_aug(TrainConfig(dataset="digits", aug=aug)) == aug
        assert applied_aug(TrainConfig(dataset="digits", aug=aug, preset="authors")) == "default"
    assert applied_aug(TrainConfig(dataset="digits", aug="mixup", preset="authors")) == "mixup"
    plain = build_transforms(TrainConfig(dataset="digits", image_size=32, resize_size=36))[0][1]
    theirs = build_transforms(TrainConfig(dataset="digits", image_size=32, resize_size=36, aug="autoaug",
                                          preset="authors"))[0][1]
    assert repr(theirs) == repr(plain) and "AutoAugment" not in repr(theirs)


def test_augmix_jsd_stacks_the_plain_view_and_two_augmix_views_and_takes_their_loss():
    """--aug augmix_jsd: the tail gives [3, C, H, W], the first view exactly the plain recipe's
    image under the same draws; the loss is the authors' (train_transform.py lines 388-403),
    written out here: CE of the plain view + 12 x the mean KL of each view from the clamped log
    of their mixture, which is the plain CE when the three views agree."""
    import torch.nn.functional as F

    from distdiff.augment import jsd_views_loss, views_loss
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    plain = train_transform(32, 36, 15.0, True, split=True, aug="default", interpolation="bilinear")[1]
    views = train_transform(32, 36, 15.0, True, split=True, aug="augmix_jsd", interpolation="bilinear")[1]
    torch.manual_seed(3)
    expected = plain(image)
    torch.manual_seed(3)
    stacked = views(image)
    assert stacked.shape == (3, 3, 32, 32) and stacked.dtype == torch.float32
    assert torch.equal(stacked[0], expected) and not torch.equal(stacked[1], stacked[2])
    assert views_loss("augmix_jsd") is jsd_views_loss and views_loss("augmix") is None
    logits, labels = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 4])
    p = [F.softmax(x, -1) for x in (logits[:4], logits[4:8], logits[8:])]
    mixture = torch.clamp((p[0] + p[1] + p[2]) / 3., 1e-7, 1).log()
    theirs = F.cross_entropy(logits[:4], labels) + 12 * (F.kl_div(mixture, p[0], reduction="batchmean") +
                                                        F.kl_div(mixture, p[1], reduction="batchmean") +
                                                        F.kl_div(mixture, p[2], reduction="batchmean")) / 3.
    torch.testing.assert_close(jsd_views_loss(logits, labels), theirs)
    same = logits[:4].repeat(3, 1)
    torch.testing.assert_close(jsd_views_loss(same, labels), F.cross_entropy(logits[:4], labels), rtol=0, atol=1e-6)
