"""Shifted digit domains and prior mixtures (embedded/shifted.py, embedded/mixture.py)."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_main, script
from distdiff import DistDiffError
from embedded import shifted
from embedded.mixture import Component, balanced_subset, component_counts, load_mixture, parse_mixture


def test_printed_renders_are_seeded_balanced_and_use_disjoint_fonts():
    assert not set(shifted.PRIOR_FONTS) & set(shifted.HELD_OUT_FONTS)
    val = shifted.printed_items("val")
    assert [s for s, _, _ in val] == [s for s, _, _ in shifted.printed_items("val")]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(val, shifted.printed_items("val")))
    assert not all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(val, shifted.printed_items("val", seed=1)))
    counts = np.bincount([d for _, d, _ in val], minlength=10)
    assert counts.tolist() == [shifted.PRINTED_PER_CLASS["val"]] * 10
    for _, _, small in val:  # sklearn's format: 8x8, 17 grey levels, some ink
        assert small.shape == (8, 8) and small.min() >= 0 and small.max() <= 16 and small.max() > 8


def test_every_font_draws_ten_different_digits():
    for font in shifted.PRIOR_FONTS + shifted.HELD_OUT_FONTS:
        glyphs = {shifted.render_printed(d, font, np.random.default_rng(0)).tobytes() for d in range(10)}
        assert len(glyphs) == 10, font


def test_restyles_keep_the_ink_and_photo_patches_come_from_disjoint_photos():
    ink = np.zeros((32, 32), np.uint8)
    ink[8:24, 14:18] = 255
    digit = Image.fromarray(ink).convert("RGB")
    inverted = np.asarray(shifted.restyle(digit, "inverted", None))[..., 0]
    assert inverted[16, 16] == 0 and inverted[0, 0] == 255
    low = np.asarray(shifted.restyle(digit, "lowcontrast", None))[..., 0]
    assert 90 < low[0, 0] < low[16, 16] < 170
    photos = shifted.sample_photos()
    assert not np.array_equal(photos["prior"], photos["test"]) and np.array_equal(photos["val"], photos["test"])
    a = shifted.restyle(digit, "photo", np.random.default_rng(3), photos["prior"])
    b = shifted.restyle(digit, "photo", np.random.default_rng(3), photos["prior"])
    assert a.size == (32, 32) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    with pytest.raises(DistDiffError, match="unknown restyling"):
        shifted.restyle(digit, "blurred", None)


@pytest.mark.slow
def test_derived_export_restyles_the_digits_splits_one_to_one(tmp_path):
    shifted.export_shift("inverted", tmp_path / "inverted", tmp_path / "digits")
    for split in shifted.SPLITS:
        ours, theirs = ({p.relative_to(tmp_path / d / split) for p in (tmp_path / d / split).rglob("*.png")}
                        for d in ("inverted", "digits"))
        assert ours == theirs and ours
    name = sorted(ours)[0]
    a = np.asarray(Image.open(tmp_path / "inverted" / "test" / name), dtype=int)
    b = np.asarray(Image.open(tmp_path / "digits" / "test" / name), dtype=int)
    assert np.array_equal(a, 255 - b)
    assert not list(tmp_path.glob("inverted/.*"))  # no temp split left behind


@pytest.mark.parametrize("text, message", [
    ("digits:prior=0.5,printed:prior=0.4", "sum to 0.9"),
    ("digits:prior=0.5,mnist:prior=0.5", "unknown dataset 'mnist'"),
    ("digits:prior=half", "numeric fraction"),
    ("digits=1", "name:split=fraction"),
    ("digits:prior=0,printed:prior=1", "0 < fraction"),
    ("digits:prior=0.5,digits:prior=0.5", "twice"),
    ("digits:prior=1,", "expected name:split"),
])
def test_mixture_parser_rejects_bad_input(text, message):
    with pytest.raises(DistDiffError, match=message):
        parse_mixture(text)


def test_mixture_counts_add_up_and_draws_are_class_balanced_and_seeded():
    mix = parse_mixture("digits:prior=0.1,printed:prior=0.9")
    assert mix == (Component("digits", "prior", 0.1), Component("printed", "prior", 0.9))
    assert component_counts(mix, 997) == [100, 897]
    thirds = parse_mixture("digits:prior=0.3333333333,printed:prior=0.3333333333,photo:prior=0.3333333334")
    assert sorted(component_counts(thirds, 100)) == [33, 33, 34]
    labels = np.repeat(np.arange(10), [5, 30, 30, 30, 30, 30, 30, 30, 30, 30])
    pick = balanced_subset(labels, 95, seed=1)
    assert pick == balanced_subset(labels, 95, seed=1) != balanced_subset(labels, 95, seed=2)
    assert np.bincount(labels[pick]).tolist() == [5] + [10] * 9  # the short class gives all it has


def fake_loader(sizes):
    """load_images stand-in: dataset -> n images per class of 2 classes, pixel value = dataset id."""
    def load(spec, split, size):
        n = sizes[spec.name]
        value = list(sizes).index(spec.name)
        return torch.full((2 * n, 3, size, size), float(value)), torch.arange(2).repeat_interleave(n), ["0", "1"]
    return load


def test_load_mixture_draws_the_counts_from_each_source(monkeypatch):
    monkeypatch.setattr("embedded.mixture.ensure_prepared", lambda spec: None)
    mix = parse_mixture("digits:prior=0.25,printed:prior=0.75")
    images, labels = load_mixture(mix, ["0", "1"], 40, 4, 0, fake_loader({"digits": 50, "printed": 50}))
    assert images.shape == (40, 3, 4, 4)
    assert (images[:, 0, 0, 0] == 0).sum() == 10 and (images[:, 0, 0, 0] == 1).sum() == 30
    assert labels.bincount().tolist() == [20, 20]
    with pytest.raises(DistDiffError, match="fewer than the 30"):
        load_mixture(mix, ["0", "1"], 40, 4, 0, fake_loader({"digits": 50, "printed": 10}))
    with pytest.raises(DistDiffError, match="has classes"):
        load_mixture(mix, ["0", "1", "2"], 40, 4, 0, fake_loader({"digits": 50, "printed": 50}))


def test_a_split_without_images_is_a_one_line_error(tmp_path, monkeypatch):
    from embedded.prior_eval import load_images

    (tmp_path / "prior" / "0").mkdir(parents=True)
    mix = parse_mixture(f"folder:{tmp_path}:prior=1")
    with pytest.raises(DistDiffError, match="empty class folder"):
        load_mixture(mix, ["0"], 10, 8, 0, load_images)


def test_shift_figure_pairs_each_guided_cell_with_its_priors_drift(tmp_path):
    plot_shift = script("studies.plot_shift")
    table = tmp_path / "sweep.csv"
    table.write_text("cell,control,fid_val,last_acc_mean,last_acc_std,d_last_acc,d_last_acc_low,d_last_acc_high\n"
                     "indomain_sd,,2.0,85.0,1.0,,,\nprinted0_sd,,9.0,80.0,2.0,,,\n"
                     "indomain_distdiff,indomain_sd,3.0,86.0,1.0,1.0,0.2,1.8\n"
                     "printed0_distdiff,printed0_sd,8.0,83.0,1.0,3.0,1.0,5.0\n")
    guided, unguided = plot_shift.curves(plot_shift.read_rows(table))
    # x is the drift of the guided cell's own prior (its control's FID), not the guided set's
    assert guided == {"distdiff": [(2.0, "indomain", 1.0, 0.2, 1.8), (9.0, "printed0", 3.0, 1.0, 5.0)]}
    assert unguided == [(2.0, "indomain", 85.0, 1.0), (9.0, "printed0", 80.0, 2.0)]
    assert run_main("studies.plot_shift", table, "--figure", tmp_path / "f.png") == 0
    assert (tmp_path / "f.png").stat().st_size > 0
    with pytest.raises(DistDiffError, match="not found"):
        run_main("studies.plot_shift", tmp_path / "missing.csv")


def test_prior_labels_at_one_spot_do_not_overlap():
    plot_shift = script("studies.plot_shift")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    points = [("inverted10", 3.2, 85.2), ("printed0", 3.4, 86.0), ("indomain", 3.5, 86.1), ("far", 30.0, 83.0)]
    ax.plot([x for _, x, _ in points], [y for _, _, y in points], "s")
    plot_shift._label_points(fig, ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    plt.close(fig)
    assert [text.get_text() for text in ax.texts] == [name for name, _, _ in points]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_preset_paired_with_its_own_control_sits_at_its_priors_drift(tmp_path):
    """With a `model` column, the authors' cells (paired with their own control) are placed at the
    drift of the prior's reference control, and that own control is not a prior of its own."""
    plot_shift = script("studies.plot_shift")
    table = tmp_path / "sweep.csv"
    table.write_text("cell,control,model,preset,fid_val,last_acc_mean,last_acc_std,d_last_acc,d_last_acc_low,"
                     "d_last_acc_high\n"
                     "low0_sd,,m/low,,20.0,82.0,1.0,,,\nlow0_authors_sd,,m/low,authors,25.0,81.0,1.0,,,\n"
                     "low0_distdiff,low0_sd,m/low,,18.0,84.0,1.0,2.0,1.0,3.0\n"
                     "low0_authors,low0_authors_sd,m/low,authors,24.0,81.5,1.0,0.5,-1.0,2.0\n")
    guided, unguided = plot_shift.curves(plot_shift.read_rows(table))
    assert guided == {"distdiff": [(20.0, "low0", 2.0, 1.0, 3.0)], "authors": [(20.0, "low0", 0.5, -1.0, 2.0)]}
    assert unguided == [(20.0, "low0", 82.0, 1.0)]



def test_selection_counts_where_both_intervals_clear_zero():
    plot_shift = script("studies.plot_shift")
    row = lambda cell, low, val, val_low: {"cell": cell, "control": "x_sd", "d_last_acc_low": low,
                                           "d_last_val_acc": val, "d_last_val_acc_low": val_low}
    rows = [{"cell": "a_sd", "control": None}, row("a_r1", 0.5, 3.0, 0.2), row("b_r1", 0.5, 1.0, -0.1),
            row("a_distdiff", -0.1, 4.0, 1.0), row("b_distdiff", 0.2, 2.0, 0.1), row("c_r1", 9.0, 9.0, 9.0),
            row("a_noval", 1.0, None, None)]
    table = plot_shift.selection(rows, ["a", "b"])
    # by mean val gain: 3.0, then 2.0, then the setting without val numbers; c is not asked
    assert [t["setting"] for t in table] == ["distdiff", "r1", "noval"]
    assert table[0]["helps_at"] == ["b"] and table[1]["helps_at"] == ["a"] and table[1]["priors"] == 2
    with pytest.raises(DistDiffError, match="for zz"):
        plot_shift.selection(rows, ["a", "zz"])


@pytest.mark.parametrize("argv, exported", [([], []), (["--shifts"], list(shifted.SHIFTS)), (["--shifts", "photo"], ["photo"])])
def test_prepare_digits_shifts_alone_exports_every_domain(tmp_path, monkeypatch, argv, exported):
    prepare = script("scripts.prepare_digits")
    calls = []
    monkeypatch.setattr(prepare, "export_digits", lambda root: {})
    monkeypatch.setattr(prepare, "export_shift", lambda shift, root, source: calls.append(shift))
    assert prepare.main(["--root", str(tmp_path / "digits"), *argv]) == 0
    assert calls == exported


def test_prior_folder_names_of_mixtures():
    from embedded.mixture import prior_name
    assert prior_name("digits") == "digits"
    assert prior_name("digits", "inverted:prior=1") == "digits_mix_inverted1"
    assert prior_name("digits", "digits:prior=0.1,printed:prior=0.9") == "digits_mix_digits0.1_printed0.9"
