"""scripts/prepare_data.py: conversion functions on a fake in-memory dataset, plus its errors."""
import argparse
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from conftest import REPO, assert_one_line_error, run_script
from distdiff import DistDiffError
from distdiff.datasets import DatasetSpec, get_dataset

SCRIPT = REPO / "scripts" / "prepare_data.py"


def load_script():
    """Import the script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_script()


class FakeDataset:
    """torchvision-like: `classes`, `targets`, items are (PIL image, label).

    Pixel (0, 0) stores the sample index and the label, so a written file can be traced back.
    """

    def __init__(self, classes, sizes, targets_attr=True):
        self.classes = list(classes)
        labels = [label for label, n in enumerate(sizes) for _ in range(n)]
        if targets_attr:
            self.targets = labels
        self._labels_hidden = labels

    def __len__(self):
        return len(self._labels_hidden)

    def __getitem__(self, i):
        label = self._labels_hidden[i]
        return Image.new("RGB", (8, 8), (i % 256, label, 0)), label


def read_pixel(path):
    """(index, label) stored in pixel (0, 0) of a lossless file."""
    with Image.open(path) as img:
        r, g, _ = img.convert("RGB").getpixel((0, 0))
    return r, g


def caltech_like_splits(dataset, per_class):
    """train = per_class drawn per class, test = the rest, both from one dataset."""
    return {"train": (dataset, prep.Rule({}, "drawn", per_class)),
            "test": (dataset, prep.Rule({}, "rest", per_class))}


# ---------------------------------------------------------------------------

def test_per_class_draw_counts_and_seed():
    labels = np.repeat([0, 1, 2], [5, 7, 9])
    drawn, rest = prep.per_class_draw(labels, 3, seed=0)
    assert np.bincount(labels[drawn]).tolist() == [3, 3, 3]
    assert np.bincount(labels[rest]).tolist() == [2, 4, 6]
    assert sorted(drawn + rest) == list(range(len(labels)))
    assert prep.per_class_draw(labels, 3, seed=0) == (drawn, rest)
    assert prep.per_class_draw(labels, 3, seed=1)[0] != drawn
    with pytest.raises(DistDiffError, match="fewer than 6"):
        prep.per_class_draw(labels, 6, seed=0)


def test_labels_without_targets_attribute_are_read_from_items():
    dataset = FakeDataset(["a", "b"], [2, 3], targets_attr=False)
    assert prep.labels_of(dataset).tolist() == [0, 0, 1, 1, 1]


def test_tree_is_an_imagefolder_with_the_right_classes(tmp_path):
    classes = ["Faces_easy", "BACKGROUND_Google", "airplanes", "wild_cat"]
    dataset = FakeDataset(classes, [6, 8, 5, 7])
    root = tmp_path / "caltech-like"
    info = prep.build_tree(root, caltech_like_splits(dataset, 3), seed=0, ext="png",
                           exclude=("BACKGROUND_Google",), meta={"torchvision_class": "Fake"})

    train, test = ImageFolder(root / "train"), ImageFolder(root / "test")
    assert train.classes == test.classes == ["Faces_easy", "airplanes", "wild_cat"]
    assert np.bincount(train.targets).tolist() == [3, 3, 3]
    assert np.bincount(test.targets).tolist() == [3, 2, 4]
    for path, label in train.samples + test.samples:  # every file sits in its own class folder
        index, source_label = read_pixel(path)
        assert classes[source_label] == train.classes[label]
        assert int(path.rsplit("/", 1)[1].split(".")[0]) % 256 == index
    stems = lambda folder: {p.rsplit("/", 1)[1] for p, _ in folder.samples}  # noqa: E731
    assert not stems(train) & stems(test)

    saved = json.loads((root / "prepare.json").read_text())
    assert saved == info
    assert saved["torchvision_class"] == "Fake" and saved["seed"] == 0
    assert saved["splits"]["train"]["images"] == 9 and saved["splits"]["test"]["images"] == 9


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    dataset = FakeDataset(["a", "b"], [10, 10])
    trees = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        prep.build_tree(tmp_path / name, caltech_like_splits(dataset, 4), seed=seed, ext="png")
        trees[name] = sorted(p.relative_to(tmp_path / name).as_posix()
                             for p in (tmp_path / name / "train").rglob("*.png"))
    assert len(trees["first"]) == 8
    assert trees["first"] == trees["again"]
    assert trees["first"] != trees["other"]


def test_unsafe_class_names_are_sanitised(tmp_path):
    assert prep.safe_class_name("Ram C/V Cargo Van 2012") == "Ram_C_V_Cargo_Van_2012"
    assert prep.safe_class_name("colt's foot") == "colts_foot"
    assert prep.safe_class_name("../etc") == "etc"
    synonyms = ("English springer", "English springer spaniel")  # Imagenette's class entries
    assert prep.safe_class_name(synonyms) == "English_springer"
    assert prep.safe_class_name("Faces_easy") == "Faces_easy"
    with pytest.raises(DistDiffError, match="both map"):
        prep.folder_names(["a/b", "a b"])
    with pytest.raises(DistDiffError, match="no usable"):
        prep.safe_class_name("///")

    classes = ["Ram C/V Cargo Van", "colt's foot", "a\\b"]
    prep.build_tree(tmp_path / "cars", {"train": (FakeDataset(classes, [2, 2, 2]), prep.Rule({}))},
                    ext="jpg")
    folders = sorted(p.name for p in (tmp_path / "cars" / "train").iterdir())
    assert folders == ["Ram_C_V_Cargo_Van", "a_b", "colts_foot"]
    assert ImageFolder(tmp_path / "cars" / "train").classes == folders
    # Prompts turn the underscores back into spaces.
    assert get_dataset("stanford_cars").prompt_name(folders[0]) == "Ram C V Cargo Van"


def test_second_call_is_a_noop(tmp_path):
    dataset = FakeDataset(["a", "b"], [5, 5])
    root = tmp_path / "ds"
    assert prep.build_tree(root, caltech_like_splits(dataset, 2), ext="png") is not None
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    (root / "marker").write_text("kept")
    assert prep.build_tree(root, caltech_like_splits(dataset, 3), ext="png") is None
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name != "marker"} == before
    assert (root / "marker").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp dir left behind


def test_failed_conversion_leaves_nothing_and_foreign_dirs_are_refused(tmp_path):
    train = FakeDataset(["a", "b"], [3, 3])
    test = FakeDataset(["a", "b"], [3, 0])  # class b missing from test
    with pytest.raises(DistDiffError, match="different classes"):
        prep.build_tree(tmp_path / "ds", {"train": (train, prep.Rule({})),
                                          "test": (test, prep.Rule({}))}, ext="png")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp dir

    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(DistDiffError, match="no prepare.json"):
        prep.build_tree(tmp_path / "mine", {"train": (train, prep.Rule({}))})


def test_main_converts_caltech_and_then_does_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "caltech-101"
    fake = FakeDataset(["Faces_easy", "Leopards", "ant"], [31, 33, 40])
    monkeypatch.setattr(prep, "get_dataset", lambda name: DatasetSpec(name, root))
    opened = []
    monkeypatch.setattr(prep, "open_dataset",
                        lambda source, rule, src, download: opened.append(rule.kwargs) or fake)
    args = argparse.Namespace(name="caltech-101", download=False, source=str(tmp_path), seed=0)

    assert prep.main(args) == 0
    assert opened == [{}]  # train and test come from one torchvision dataset
    info = json.loads((root / "prepare.json").read_text())
    assert info["torchvision_class"] == "Caltech101"
    assert info["splits"]["train"]["images"] == 90 and info["splits"]["test"]["images"] == 14
    assert np.bincount(ImageFolder(root / "train").targets).tolist() == [30, 30, 30]

    capsys.readouterr()
    assert prep.main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    assert opened == [{}]  # nothing was opened the second time
    prep.main(argparse.Namespace(**dict(vars(args), seed=3)))
    assert "drawn with --seed 0, not 3" in capsys.readouterr().out


def first_unprepared():
    """A convertible dataset whose data/<name> is not prepared on this machine."""
    for name in sorted(prep.SOURCES):
        if not prep.is_complete(get_dataset(name).root):
            return name
    pytest.skip("every dataset is prepared here; the missing-source path cannot run")


def test_missing_source_is_a_one_line_error():
    name = first_unprepared()
    proc = run_script(SCRIPT, name, check=False, timeout=120)
    assert_one_line_error(proc, "--download", "--source")


def test_absent_source_dir_and_non_torchvision_names_are_refused(tmp_path, monkeypatch):
    # In-process: each script subprocess pays a multi-second torch import; the one above
    # already checks that a DistDiffError reaches the terminal as one line.
    monkeypatch.setattr(prep, "get_dataset", lambda name: DatasetSpec(name, tmp_path / name))
    args = argparse.Namespace(name="dtd", download=False, source=str(tmp_path / "absent"), seed=0)
    with pytest.raises(DistDiffError, match="does not exist.*--download"):
        prep.main(args)
    assert not (tmp_path / "dtd").exists()
    monkeypatch.setattr(prep, "get_dataset", get_dataset)
    with pytest.raises(DistDiffError, match="prepare_digits.py"):
        prep.main(argparse.Namespace(name="digits", download=False, source=None, seed=0))
    with pytest.raises(DistDiffError, match="unknown dataset 'cifar10'; choose from caltech-101"):
        prep.main(argparse.Namespace(name="cifar10", download=False, source=None, seed=0))
