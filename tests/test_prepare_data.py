"""Dataset preparation (distdiff/prepare.py, scripts/prepare_data.py): conversion on a fake
in-memory dataset, seeded val carving, the Caltech-101 rules, and the errors."""
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from torchvision.datasets import ImageFolder

from conftest import REPO, run_main
from distdiff import DistDiffError
from distdiff import registry
from distdiff import prepare as prep
from distdiff.splits import per_class_split


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
    draw = (("train", per_class),)
    return {"train": (dataset, prep.Rule({}, "train", draw)), "test": (dataset, prep.Rule({}, "rest", draw))}


# ---------------------------------------------------------------------------

def test_the_committed_digits_splits_are_the_seeded_split():
    """embedded.digits.export_digits compares the split files with the seeded split only when it
    exports something (once every split is there it skips scikit-learn), so the committed files
    are compared here."""
    from sklearn.datasets import load_digits

    from embedded.digits import make_splits, read_splits
    assert read_splits(REPO / "data" / "digits" / "splits") == make_splits(load_digits().target)


def test_per_class_split_counts_and_seed():
    labels = np.repeat([0, 1, 2], [5, 7, 9])
    chunks = per_class_split(labels, [("train", 3)], seed=0)
    drawn, rest = chunks["train"], chunks["rest"]
    assert np.bincount(labels[drawn]).tolist() == [3, 3, 3]
    assert np.bincount(labels[rest]).tolist() == [2, 4, 6]
    assert sorted(drawn + rest) == list(range(len(labels)))
    assert per_class_split(labels, [("train", 3)], seed=0) == chunks
    assert per_class_split(labels, [("train", 3)], seed=1)["train"] != drawn
    # A second chunk comes from the same permutation: the first chunk does not change.
    two = per_class_split(labels, [("train", 3), ("val", 1)], seed=0)
    assert two["train"] == drawn and not set(two["val"]) & set(drawn)
    assert sorted(two["train"] + two["val"] + two["rest"]) == list(range(len(labels)))
    with pytest.raises(DistDiffError, match="fewer than the 6"):
        per_class_split(labels, [("train", 6)], seed=0)


def test_carved_val_is_disjoint_from_train_and_test(tmp_path):
    dataset = FakeDataset(["a", "b"], [12, 15])
    test = FakeDataset(["a", "b"], [3, 3])
    splits = {name: (test if rule.kwargs == {"split": "test"} else dataset, rule)
              for name, rule in prep._carve({"split": "train"}, {"split": "test"}, 4).items()}
    info = prep.build_tree(tmp_path / "ds", splits, seed=0, ext="png")
    train, val = ImageFolder(tmp_path / "ds" / "train"), ImageFolder(tmp_path / "ds" / "val")
    assert np.bincount(val.targets).tolist() == [4, 4] and np.bincount(train.targets).tolist() == [8, 11]
    stems = lambda folder: {p.rsplit("/", 1)[1] for p, _ in folder.samples}  # noqa: E731
    assert not stems(train) & stems(val)
    assert info["splits"]["val"]["images"] == 8 and info["splits"]["test"]["images"] == 6


def test_every_registered_real_dataset_selects_on_val_except_caltech():
    for name, source in prep.SOURCES.items():
        has_val = "val" in source.splits
        assert has_val == (registry.get_dataset(name).val_split == "val"), name
        assert has_val or name == "caltech-101" or name in prep.AUTHORS_SPLITS, name


def test_caltech_drops_background_and_faces_easy_and_shots_resize_the_draw():
    source = prep.SOURCES["caltech-101"]
    assert set(source.exclude) == {"BACKGROUND_Google", "Faces_easy"}
    three = prep.with_options(source, shots=3)
    assert three.splits["train"].draw == (("train", 3),) and three.splits["test"].draw == (("train", 3),)
    assert prep.with_options(source, keep=("Faces_easy",)).exclude == ("BACKGROUND_Google",)
    with pytest.raises(DistDiffError, match="few-shot datasets only"):
        prep.with_options(prep.SOURCES["dtd"], shots=3)


def test_labels_without_targets_attribute_are_read_from_items():
    dataset = FakeDataset(["a", "b"], [2, 3], targets_attr=False)
    assert prep.labels_of(dataset).tolist() == [0, 0, 1, 1, 1]


def test_tree_is_an_imagefolder_with_the_right_classes(tmp_path):
    classes = ["Faces_easy", "BACKGROUND_Google", "airplanes", "wild_cat"]
    dataset = FakeDataset(classes, [6, 8, 5, 7])
    root = tmp_path / "caltech-like"
    info = prep.build_tree(root, caltech_like_splits(dataset, 3), seed=0, ext="png",
                           exclude=("BACKGROUND_Google",), meta={"torchvision_class": "Fake"})  # keeps Faces_easy

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
    assert registry.get_dataset("stanford_cars").prompt_name(folders[0]) == "Ram C V Cargo Van"


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


def test_prepare_converts_caltech_and_then_does_nothing(tmp_path, capsys):
    root = tmp_path / "caltech-101"
    fake = FakeDataset(["BACKGROUND_Google", "Faces_easy", "Leopards", "ant"], [35, 31, 33, 40])
    opened = []

    def open_fn(source, rule, src, download):
        opened.append(rule.kwargs)
        return fake

    info = prep.prepare("caltech-101", root, tmp_path, open_fn=open_fn)
    assert opened == [{}]  # train and test come from one torchvision dataset
    assert info["torchvision_class"] == "Caltech101" and info["num_classes"] == 2
    assert info["splits"]["train"]["images"] == 60 and info["splits"]["test"]["images"] == 13
    assert np.bincount(ImageFolder(root / "train").targets).tolist() == [30, 30]
    assert prep.prepare("caltech-101", root, tmp_path, open_fn=open_fn) is None  # complete: nothing opened
    assert opened == [{}]


def test_script_reports_an_existing_tree_and_a_seed_mismatch(tmp_path, monkeypatch, capsys):
    root = tmp_path / "caltech-101"
    prep.build_tree(root, caltech_like_splits(FakeDataset(["a", "b"], [5, 5]), 2), seed=0, ext="png")
    monkeypatch.setitem(registry.registered(), "caltech-101", registry.DatasetSpec("caltech-101", root))
    assert run_main("scripts.prepare_data", "caltech-101", "--seed", "3") == 0
    out = capsys.readouterr().out
    assert "already prepared" in out and "drawn with --seed 0, not 3" in out


def test_missing_or_absent_source_and_other_names_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.registered(), "dtd", registry.DatasetSpec("dtd", tmp_path / "dtd"))
    with pytest.raises(DistDiffError, match="no source for dtd: pass --download .* or --source DIR"):
        run_main("scripts.prepare_data", "dtd")
    with pytest.raises(DistDiffError, match="does not exist.*--download"):
        run_main("scripts.prepare_data", "dtd", "--source", tmp_path / "absent")
    assert not (tmp_path / "dtd").exists()
    with pytest.raises(DistDiffError, match="prepare_digits.py"):
        run_main("scripts.prepare_data", "digits")
    with pytest.raises(DistDiffError, match="unknown dataset 'cifar10'; choose from bloodmnist, breastmnist, caltech-101"):
        run_main("scripts.prepare_data", "cifar10")


def test_an_already_split_source_is_kept_as_it_is(tmp_path, monkeypatch, capsys):
    """The authors' Caltech-101 layout (train/ and test/ ImageFolders): no draw, no val carved from
    their train, the dropped classes still dropped."""
    source = tmp_path / "authors_split"
    for split, per_class in (("train", 3), ("test", 2)):
        for c, name in enumerate(("Faces", "Leopards", "BACKGROUND_Google")):
            (source / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40 + i, 30), (40 * c, 10 * i, 100)).save(source / split / name / f"image_{i:04d}.jpg")
    root = tmp_path / "caltech-101"
    monkeypatch.setitem(registry.registered(), "caltech-101", registry.DatasetSpec("caltech-101", root))
    with pytest.raises(DistDiffError, match="--shots draws a training split, but .* is already split"):
        run_main("scripts.prepare_data", "caltech-101", "--source", source, "--shots", "2")
    assert not root.exists()
    assert run_main("scripts.prepare_data", "caltech-101", "--source", source) == 0
    info = json.loads((root / "prepare.json").read_text())
    assert "kept as it is" in info["source_layout"] and set(info["splits"]) == {"train", "test"}
    assert sorted(p.name for p in (root / "train").iterdir()) == ["Faces", "Leopards"]
    assert np.bincount(ImageFolder(root / "train").targets).tolist() == [3, 3]
    assert np.bincount(ImageFolder(root / "test").targets).tolist() == [2, 2]
    assert not (root / "val").exists()


def test_the_authors_dtd_trains_on_train1_and_val1_joined(tmp_path):
    fakes = {"train": FakeDataset(["banded", "dotted"], [7, 9]), "val": FakeDataset(["banded", "dotted"], [2, 3]),
             "test": FakeDataset(["banded", "dotted"], [4, 4])}

    def open_fn(source, rule, src, download):
        assert source.common == {"partition": 1}
        return fakes[rule.kwargs["split"]]
    info = prep.prepare("dtd_authors", tmp_path / "dtd_authors", tmp_path, open_fn=open_fn)
    assert info["splits"]["train"]["joined_kwargs"] == [{"split": "val"}] and set(info["splits"]) == {"train", "test"}
    train = ImageFolder(tmp_path / "dtd_authors" / "train")
    assert np.bincount(train.targets).tolist() == [9, 12] and len({p for p, _ in train.samples}) == 21


def test_fgvc_aircraft_keeps_its_official_variant_splits(tmp_path):
    fakes = {s: FakeDataset(["707-320", "F/A-18"], n) for s, n in (("train", [3, 4]), ("val", [2, 2]),
                                                                     ("test", [5, 5]))}

    def open_fn(source, rule, src, download):
        assert source.common == {"annotation_level": "variant"}
        return fakes[rule.kwargs["split"]]
    info = prep.prepare("fgvc_aircraft", tmp_path / "fgvc_aircraft", tmp_path, open_fn=open_fn)
    assert {s: v["images"] for s, v in info["splits"].items()} == {"train": 7, "val": 4, "test": 10}
    assert sorted(p.name for p in (tmp_path / "fgvc_aircraft" / "train").iterdir()) == ["707-320", "F_A-18"]
    assert registry.get_dataset("fgvc_aircraft").prompt("F_A-18") == "a photo of a F A-18, a type of aircraft"


@pytest.mark.parametrize("name,train_kwargs,test_kwargs,common", [
    ("stanford_cars_authors", {"split": "train"}, {"split": "test"}, {}),
    ("oxford_pets_authors", {"split": "trainval"}, {"split": "test"}, {"target_types": "category"}),
    ("imagenette2-320", {"split": "train"}, {"split": "val"}, {"size": "320px"}),
])
def test_the_authors_splits_train_on_the_whole_training_split(tmp_path, name, train_kwargs, test_kwargs, common):
    """Their dataloader.py trains on the whole training split (no val carved) and tests on the
    test split (Imagenette: its val, at 320 px): the `_authors` datasets and imagenette2-320."""
    fakes = {"train": FakeDataset(["a", "b"], [7, 9]), "test": FakeDataset(["a", "b"], [3, 4])}
    opened = []

    def open_fn(source, rule, src, download):
        opened.append({**source.common, **rule.kwargs})
        return fakes["train" if rule.kwargs == train_kwargs else "test"]
    info = prep.prepare(name, tmp_path / name, tmp_path, open_fn=open_fn)
    assert sorted(map(str, opened)) == sorted(map(str, [{**common, **train_kwargs}, {**common, **test_kwargs}]))
    assert set(info["splits"]) == {"train", "test"} and not (tmp_path / name / "val").exists()
    assert np.bincount(ImageFolder(tmp_path / name / "train").targets).tolist() == [7, 9]
    assert registry.get_dataset(name).val_split is None


def test_the_authors_flowers_folders_are_named_by_cat_to_name_and_valid_is_test(tmp_path):
    source = tmp_path / "flower_data"
    for split, per_class in (("train", 3), ("valid", 2)):
        for folder in ("1", "10"):
            (source / split / folder).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (int(folder), i, 9)).save(source / split / folder / f"image_{i}.jpg")
    with pytest.raises(DistDiffError, match="cat_to_name.json not found"):
        prep.prepare("oxford_flowers_authors", tmp_path / "f", source)
    (source / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose"}))
    with pytest.raises(DistDiffError, match=r"no class for folder\(s\) \['10'\]"):
        prep.prepare("oxford_flowers_authors", tmp_path / "f", source)
    (source / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "10": "globe thistle"}))
    info = prep.prepare("oxford_flowers_authors", tmp_path / "f", source)
    assert {s: v["images"] for s, v in info["splits"].items()} == {"train": 6, "test": 4}
    assert sorted(p.name for p in (tmp_path / "f" / "test").iterdir()) == ["globe_thistle", "pink_primrose"]
    assert registry.get_dataset("oxford_flowers_authors").val_split is None
    assert not (tmp_path / "f").with_name("f").joinpath("val").exists()


@pytest.mark.parametrize("name,channels", [("pathmnist", 3), ("bloodmnist", 3), ("breastmnist", None)])
def test_medmnist_npz_converts_to_its_official_splits(tmp_path, name, channels):
    """The medmnist package's .npz (28 px, labels of shape (N, 1)), fabricated: train / val / test
    written as they are, classes named by the package's labels, prompts with the authors' words."""
    classes = prep.MEDMNIST_CLASSES[name]
    rng = np.random.default_rng(0)
    sizes = {"train": 3, "val": 1, "test": 2}  # per class
    arrays = {}
    for split, per_class in sizes.items():
        labels = np.repeat(np.arange(len(classes)), per_class)[:, None].astype(np.uint8)
        shape = (len(labels), 28, 28) + ((channels,) if channels else ())
        arrays.update({f"{split}_images": rng.integers(0, 256, shape, dtype=np.uint8), f"{split}_labels": labels})
    source = tmp_path / "medmnist"
    source.mkdir()
    with pytest.raises(DistDiffError, match=f"{name}.npz not found; fetch it"):
        prep.prepare(name, tmp_path / name, source)
    with pytest.raises(DistDiffError, match=f"--download is not offered for {name}.npz"):
        prep.prepare(name, tmp_path / name, source, download=True)
    np.savez(source / f"{name}.npz", **{k: v for k, v in arrays.items() if not k.startswith("val")})
    with pytest.raises(DistDiffError, match="not a MedMNIST .npz with val_images and val_labels"):
        prep.prepare(name, tmp_path / name, source)
    np.savez(source / f"{name}.npz", **arrays)
    info = prep.prepare(name, tmp_path / name, source)
    assert {s: v["images"] for s, v in info["splits"].items()} == {s: n * len(classes) for s, n in sizes.items()}
    train = ImageFolder(tmp_path / name / "train")
    assert train.classes == sorted(prep.folder_names(classes)) and len(train) == 3 * len(classes)
    first = sorted((tmp_path / name / "train" / prep.safe_class_name(classes[0])).iterdir())[0]
    with Image.open(first) as img:  # lossless: the array's pixels, as RGB
        assert img.size == (28, 28) and img.mode == "RGB"
        expected = arrays["train_images"][0] if channels else np.stack([arrays["train_images"][0]] * 3, -1)
        assert np.array_equal(np.asarray(img), expected)
    spec = registry.get_dataset(name)
    assert spec.val_split == "val" and spec.prompt(prep.safe_class_name(classes[1]), "authors").endswith(".")
    if name == "breastmnist":
        assert spec.prompt("normal_benign") == "a photo of normal benign ultrasound image"


def fabricate(name, source_dir, classes=("a b", "c")):
    """Raw files for dataset `name` with the smallest per-class counts its rule needs: an open_fn of
    fakes (torchvision datasets), the flower_data folders, or a MedMNIST .npz (their own readers)."""
    source = prep.SOURCES[name]
    if source.tv_class == "MedMNIST":
        classes = source.common["classes"]
        arrays = {}
        for split in ("train", "val", "test"):
            labels = np.repeat(np.arange(len(classes)), 2)[:, None]
            arrays.update({f"{split}_images": np.zeros((len(labels), 28, 28, 3), np.uint8), f"{split}_labels": labels})
        np.savez(source_dir / source.common["file"], **arrays)
        return None
    if name == "oxford_flowers_authors":
        for split in ("train", "valid"):
            for folder in ("1", "2"):
                (source_dir / split / folder).mkdir(parents=True)
                for i in range(2):
                    Image.new("RGB", (8, 8), (i, 9, 9)).save(source_dir / split / folder / f"{i}.jpg")
        (source_dir / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved orchid"}))
        return None
    # every split of the same size: enough for the largest draw (imagenette's 50 val per class + 2 shots)
    per_class = 2 + max((n for rule in source.splits.values() for _, n in rule.draw if _ != "train"), default=2)
    names = [*classes, *source.exclude]
    return lambda source_, rule, src, download: FakeDataset(names, [per_class] * len(names))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(prep.SOURCES))
def test_every_dataset_converts_and_trains_one_epoch_under_the_preset(tmp_path, name):
    """Each dataset prepare_data.py offers, from a fabricated source into its registered folder,
    then one epoch of train_original.py --preset authors at tiny shapes: a results.json, and the
    selection the preset's rule gives (their guide: the best test epoch)."""
    spec = registry.get_dataset(name)
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    open_fn = fabricate(name, source_dir)
    shots = 2 if prep.SOURCES[name].shots_chunk else None
    if spec.root.exists():  # an earlier parametrisation of this session left it (the tree is the session's)
        shutil.rmtree(spec.root)
    prep.prepare(name, spec.root, source_dir, shots=shots, **({"open_fn": open_fn} if open_fn else {}))
    try:
        out = tmp_path / "ckpt"
        run_main("train_original", name, "--preset", "authors", "--arch", "resnet_small", "--epochs", "1",
                 "--image_size", "32", "--resize_size", "36", "--batch_size", "8", "--threads", "1", "--output", out)
        results = list(out.rglob("results.json"))
        assert len(results) == 1 and json.loads(results[0].read_text())["epochs"] == 1
        args = yaml.safe_load((results[0].parent / "args.yaml").read_text())
        assert args["guide_selection"].startswith("best_test") and args["resize_mode"] == "squash"
        assert args["n_train"] == len(ImageFolder(spec.root / "train"))
    finally:
        shutil.rmtree(spec.root, ignore_errors=True)
