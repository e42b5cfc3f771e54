"""Your own dataset (docs/own_dataset.md): a folder tree's dataset.yaml (prompt words, whole
prompts, the val split), the val split held out of train/ when there is no val/, parse_logs.py on
one run dir, and the CPU time hint. The README's commands themselves run in the paper-path and
chain background jobs."""
import json

import pytest

from conftest import run_main
from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff.registry import get_dataset


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from embedded.rehearsal import fabricate_folder_dataset
    return fabricate_folder_dataset(tmp_path_factory.mktemp("own") / "my_data", 3, train=5, test=2)


def spec_with(tree, text):
    (tree / "dataset.yaml").write_text(text)
    try:
        return get_dataset(f"folder:{tree}")
    finally:
        (tree / "dataset.yaml").unlink()


CLASSES = ["class_000", "class_001", "class_002"]


def test_prompt_words_whole_prompts_and_the_template(tree):
    spec = spec_with(tree, "template: 'a photo of a {}, a kind of shape'\n"
                           "classes: {class_000: disc, class_001: ring, class_002: square}\n"
                           "prompts: {class_002: 'a blue square on white'}\n")
    assert spec.class_prompts(CLASSES) == ["a photo of a disc, a kind of shape", "a photo of a ring, a kind of shape",
                                           "a blue square on white"]
    assert get_dataset(f"folder:{tree}").class_prompts(CLASSES)[0] == "a photo of a class 000"  # no file


@pytest.mark.parametrize("text,message", [
    ("classes: {class_000: disc}\n", r"classes: class folder\(s\) \['class_001', 'class_002'\] not listed"),
    ("classes: {class_000: a, class_001: b, class_002: c, class_9: d}\n", r"no class folder \['class_9'\] in train/"),
    ("prompts: {dog: 'a dog'}\n", r"prompts: no class folder \['dog'\]"),
    ("template: 'a photo'\n", "must hold {} once"),
    ("colour: red\n", r"unknown key\(s\) \['colour'\]"),
    ("val_per_class: -1\n", "'-1' is not an integer >= 0|-1 is not an integer >= 0"),
    ("classes: [unclosed\n", "not valid YAML"),
])
def test_a_bad_dataset_yaml_is_one_line(tree, text, message):
    with pytest.raises(DistDiffError, match=message):
        spec_with(tree, text)


def test_without_val_two_per_class_are_held_out_the_same_way_in_every_stage(tree):
    spec = get_dataset(f"folder:{tree}")
    assert spec.val_from_train == 2 and spec.val_description() == "2 per class held out of train/ (seed 0)"
    train, val = ds.load_split(spec, "train"), ds.load_split(spec, "val")
    assert len(train) == 3 * 3 and len(val) == 3 * 2 and sorted(val.targets) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    again = ds.load_split(get_dataset(f"folder:{tree}"), "val")
    assert again.samples == val.samples  # seeded: every process draws the same
    from distdiff.expansion import load_sources
    assert load_sources(spec).samples == train.samples  # the expander's sources leave val out
    other = spec_with(tree, "val_seed: 7\n")
    assert ds.load_split(other, "val").samples != val.samples
    assert spec_with(tree, "val_per_class: 0\n").val_split is None


def test_a_class_too_small_to_hold_out_from_is_one_line(tree):
    with pytest.raises(DistDiffError, match="class 'class_000' has 5 image.*too few to hold out 5"):
        ds.load_split(spec_with(tree, "val_per_class: 5\n"), "train")


def test_parse_logs_on_one_run_dir_prints_that_run(tmp_path, capsys):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"best_acc": 80.0, "last_acc": 75.5, "test_at_best_val": 78.0,
                                                  "epochs": 3, "seed": 1, "n_train": 9}))
    run_main("parse_logs", run)
    out = capsys.readouterr().out
    assert "| run | run1 |" in out and "| last_acc | 75.5 |" in out and "| status | done |" in out
    assert (run / "summary_run.csv").read_text().startswith("run,status,seed,epochs,n_train,best_acc")
    (run / "results.json").unlink()
    (run / "args.yaml").write_text("arch: x\n")
    (run / "summary.csv").write_text("epoch,train_loss\n1,2.0\n2,1.5\n")
    run_main("parse_logs", run)
    assert "incomplete (2 epochs so far)" in capsys.readouterr().out
    with pytest.raises(DistDiffError, match="is one run dir"):
        run_main("parse_logs", run, "--seeds", "1")


def test_a_long_cpu_run_says_how_long_and_how_to_make_it_quick(monkeypatch):
    import torch

    from distdiff import training
    from distdiff.recipe import TrainConfig
    from models.classifiers import create_classifier
    model = create_classifier("resnet_small", 3, False)
    before = [t.clone() for t in model.state_dict().values()]
    state = torch.random.get_rng_state()
    cfg = TrainConfig(dataset="digits", arch="resnet_small", image_size=32)
    assert training.cpu_time_hint(cfg, model, n_train=9, n_eval=6, epochs=2) is None  # short: no line
    monkeypatch.setattr(training, "CPU_HINT_SECONDS", 0)
    line = training.cpu_time_hint(cfg, model, n_train=9, n_eval=6, epochs=2)
    assert "on the CPU this run needs about" in line and "--arch resnet_small --image_size 32" in line
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))  # BN statistics too
    assert torch.equal(state, torch.random.get_rng_state())


def test_an_expansion_of_some_classes_keeps_the_dataset_labels(tmp_path):
    """--limit below the class count expands some classes only: their images keep the dataset's
    labels (by class name, not the expanded folder's own sorted order), and a foreign class is
    an error."""
    from embedded.rehearsal import fabricate_image
    for name in ("class_001", "class_002"):
        (tmp_path / "exp" / name).mkdir(parents=True)
        fabricate_image(1, 0, (32, 32)).save(tmp_path / "exp" / name / "a_expand_0.png")
    folder = ds.image_folder(tmp_path / "exp", verify=False)
    assert ds.align_classes(folder, CLASSES, "x") == ["class_000"]
    assert folder.targets == [1, 2] and [label for _, label in folder.samples] == [1, 2] and folder.classes == CLASSES
    with pytest.raises(DistDiffError, match=r"class folders \['class_002'\] are not classes"):
        ds.align_classes(ds.image_folder(tmp_path / "exp", verify=False), CLASSES[:2], "x")


def test_a_photo_taken_sideways_is_loaded_upright(tmp_path):
    """A phone photo stored landscape with EXIF orientation 6 (turn 90 degrees clockwise) loads as
    the portrait viewers show, and the cache's size estimate reads it the same way."""
    import numpy as np
    from PIL import Image
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the stored image's left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    (tmp_path / "train" / "a").mkdir(parents=True)
    image.save(tmp_path / "train" / "a" / "p.jpg", exif=exif, quality=95)
    loaded = np.asarray(ds.rgb_loader(tmp_path / "train" / "a" / "p.jpg"))
    assert loaded.shape == (40, 20, 3) and loaded[:10].mean() > 200 and loaded[-10:].mean() < 50  # band on top
    folder = ds.image_folder(tmp_path / "train")
    assert ds.estimate_cache_bytes(folder, lambda t: t) == 3 * 40 * 20


@pytest.mark.slow
def test_the_authors_expand_num_filter_and_repeat_baseline(tmp_path):
    """train_expand.py --expand_num N trains on each source's first N copies (run dir _first<N>);
    train_original.py --repeat R on the original split R+1 times per epoch (run dir repeat_x<R>)."""
    import yaml
    from PIL import Image
    from test_bad_input import TINY, make_tree
    root = make_tree(tmp_path / "tree", classes=("a", "b"), per_class=3)
    (root / "dataset.yaml").write_text("val_per_class: 0\n")
    for name in ("a", "b"):
        (tmp_path / "exp" / name).mkdir(parents=True)
        for stem in ("0", "1"):
            for k in range(3):
                Image.new("RGB", (32, 32), (9 * k, 50, 90)).save(tmp_path / "exp" / name / f"{stem}_expand_{k}.png")
    run_main("train_expand", f"folder:{root}", *TINY, "--exp", "mine_x3", "--expanded_dir", tmp_path / "exp",
             "--expand_num", "1", "--output", tmp_path / "out", "--allow_partial")
    args = yaml.safe_load(next((tmp_path / "out").rglob("*mine_x3_first1_lr0.1/seed1/args.yaml")).read_text())
    assert args["n_train"] == 6 + 2 * 2 * 1 and args["expand_num"] == 1
    run_main("train_original", f"folder:{root}", *TINY, "--repeat", "2", "--output", tmp_path / "out")
    args = yaml.safe_load(next((tmp_path / "out").rglob("*repeat_x2_lr0.1/seed1/args.yaml")).read_text())
    assert args["n_train"] == 3 * 6 and args["repeat"] == 2


@pytest.mark.slow
def test_train_fc_trains_the_head_alone_in_its_own_run_dir(tmp_path):
    """--train_fc (the authors' flag): only the classification head changes, and the run has its
    own dir (a head-only optimizer cannot resume a full one)."""
    import torch
    from test_bad_input import TINY, make_tree
    root = make_tree(tmp_path / "tree", classes=("a", "b"), per_class=3)
    (root / "dataset.yaml").write_text("val_per_class: 0\n")
    run_main("train_original", f"folder:{root}", *TINY, "--train_fc", "--output", tmp_path / "out")
    run = next((tmp_path / "out").rglob("resnet_small_unpretrained_fc_lr0.1/seed1"))
    trained = torch.load(run / "last.pt", weights_only=True)["model"]
    from models.classifiers import create_classifier
    torch.manual_seed(1)  # train_classifier seeds with the run's seed before creating the model
    start = create_classifier("resnet_small", 2, False).state_dict()
    changed = {name for name in start if start[name].is_floating_point() and not torch.equal(start[name], trained[name])
               and "running" not in name}
    assert changed and all(name.startswith("fc.") or name.startswith("head") for name in changed), changed


def test_a_rerun_with_other_prompt_words_or_another_val_split_is_refused(tmp_path):
    """Both change the images (the prompts, or which images are sources and so every item's
    draws): a rerun into the same output folder says so in one line instead of mixing them."""
    from distdiff.expand_flags import GENERATION_KEYS
    from distdiff.shards import check_or_write_args
    assert {"class_prompts", "val_split_resolved"} <= set(GENERATION_KEYS)
    settings = {"dataset": "folder:x", "class_prompts": ["a photo of a disc"], "val_split_resolved": "none"}
    check_or_write_args(tmp_path, settings, GENERATION_KEYS)
    with pytest.raises(DistDiffError, match="class_prompts"):
        check_or_write_args(tmp_path, dict(settings, class_prompts=["a photo of a ring"]), GENERATION_KEYS)
    with pytest.raises(DistDiffError, match="val_split_resolved"):
        check_or_write_args(tmp_path, dict(settings, val_split_resolved="2 per class held out of train/ (seed 0)"),
                            GENERATION_KEYS)


def test_the_torch_free_listing_is_torchvisions(tmp_path):
    """distdiff.folders lists a tree as torchvision's ImageFolder does (nested folders, upper-case
    extensions, other files, a linked folder, names that sort by code point), and the stages'
    ImageFolder is built from it."""
    import os

    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    from distdiff import folders
    for path in ("b/x.png", "b/A.PNG", "b/sub/z.jpeg", "b/sub/deeper/y.webp", "a/1.bmp", "a/readme.txt", "a/.hidden.jpg",
                 "Z/only.tif", "c/d/e.JPG", "link_target/q.png"):
        (tmp_path / "tree" / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".txt"):
            (tmp_path / "tree" / path).write_text("not an image")
        else:
            Image.new("RGB", (4, 4)).save(tmp_path / "tree" / path, format="PNG")
    os.symlink(tmp_path / "tree" / "link_target", tmp_path / "tree" / "c" / "linked")
    (tmp_path / "tree" / "file_at_the_top.png").write_bytes(b"")
    root = str(tmp_path / "tree")
    classes, class_to_idx = find_classes(root)
    assert folders.class_folders(root) == classes
    assert folders.IMG_EXTENSIONS == IMG_EXTENSIONS
    assert folders.class_samples(root, classes) == make_dataset(root, class_to_idx, IMG_EXTENSIONS)
    assert ds.image_folder(root, verify=False).samples == make_dataset(root, class_to_idx, IMG_EXTENSIONS)
    (tmp_path / "tree" / "empty").mkdir()
    with pytest.raises(DistDiffError, match="no image in class folder.*empty.*an empty class folder"):
        folders.class_samples(root, folders.class_folders(root))
