"""Bad input to the training scripts: a clear one-line DistDiffError before any heavy work, and
no half-made run dir (the scripts print it as one `error:` line: tests/test_cli.py)."""
import pytest
import torch
from PIL import Image

from conftest import run_main
from distdiff import DistDiffError

TINY = ["--epochs", "1", "--arch", "resnet_small", "--image_size", "32", "--resize_size", "36", "--threads", "1"]


def make_tree(root, classes=("a", "b"), per_class=3, splits=("train", "test")):
    """A small ImageFolder tree."""
    for split in splits:
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.new("RGB", (32, 32), (40 * i + 5 * k, 100, 200 - 30 * i)).save(folder / f"{k}.png")
    return root


def train(*argv):
    return run_main("train_original", *argv)


def test_unknown_dataset_lists_known(tmp_path):
    with pytest.raises(DistDiffError, match=r"unknown dataset 'no-such-set'; known: .*caltech-101.*digits.*folder:<path>"):
        train("no-such-set", "--output", tmp_path)


def test_unknown_arch_lists_known(tmp_path, digits_ready):
    with pytest.raises(DistDiffError, match="unknown arch 'resnet9000'; known: .*resnet50.*resnet_small"):
        train("digits", "resnet9000", "--output", tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(DistDiffError, match="not found; run: python scripts/prepare_data.py caltech-101"):
        train("caltech-101", "--output", tmp_path)
    with pytest.raises(DistDiffError, match="not found"):
        train(f"folder:{tmp_path / 'nothing'}", *TINY, "--output", tmp_path)


def test_empty_class_dir(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "train" / "c").mkdir()
    with pytest.raises(DistDiffError, match="empty class"):
        train(f"folder:{root}", *TINY, "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_names_the_file(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "train" / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DistDiffError, match="broken.png"):
        train(f"folder:{root}", *TINY, "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(tmp_path):
    root = make_tree(tmp_path / "tree")
    with pytest.raises(DistDiffError, match=r"--device cuda asks for a GPU but torch cannot use CUDA here "
                                             r"\(torch .*, CUDA build .*\).*--device cpu"):
        train(f"folder:{root}", *TINY, "--device", "cuda", "--output", tmp_path / "out")
    # The seed README's positional GPU index is the same error, not a quiet CPU run.
    with pytest.raises(DistDiffError, match="GPU index 0 .*asks for a GPU"):
        train(f"folder:{root}", "resnet_small", "0.1", "False", "0", *TINY, "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_dataset_trains_on_a_temp_tree_and_selects_on_its_val(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("cat", "dog", "emu"), splits=("train", "val", "test"))
    results = train(f"folder:{root}", *TINY, "--output", tmp_path / "out")
    assert "test_at_best_val" in results
    assert len(list((tmp_path / "out").rglob("results.json"))) == 1
    assert (tmp_path / "out" / "folder_tree").is_dir()


def test_train_expand_rejects_mismatched_classes(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("cat", "dog"))
    expanded = make_tree(tmp_path / "exp", classes=("cat", "emu")) / "train"
    with pytest.raises(DistDiffError, match=r"expanded set .*class folders \['emu'\] are not classes of the dataset"):
        run_main("train_expand", f"folder:{root}", *TINY, "--exp", "x", "--expanded_dir", expanded,
                 "--output", tmp_path / "out", "--allow_partial")  # a hand-made folder: no manifests
    assert not (tmp_path / "out").exists()


def test_a_split_too_large_to_cache_is_streamed_with_the_same_items(tmp_path):
    from distdiff import datasets as ds
    root = make_tree(tmp_path / "tree", per_class=4)
    head, tail = ds.test_transform(24, 28, split=True)
    cached = ds.CacheBudget(1).preload(ds.image_folder(root / "test"), head, tail)
    streamed = ds.CacheBudget(0).preload(ds.image_folder(root / "test"), head, tail)
    assert isinstance(cached, ds.Preloaded) and not isinstance(streamed, ds.Preloaded)
    assert cached.images[0].dtype == torch.uint8  # 1 byte per pixel in memory, not 4
    for i in range(len(cached)):
        assert torch.equal(cached[i][0], streamed[i][0]) and cached[i][1] == streamed[i][1]


def test_a_missing_expansion_names_the_command_that_makes_it(tmp_path):
    root = make_tree(tmp_path / "tree")
    with pytest.raises(DistDiffError, match=r"exp/none not found; run: python expand_distdiff.py --dataset folder:\S+ "
                                            r"--out \S+exp/none$"):
        run_main("train_expand", f"folder:{root}", *TINY, "--exp", "x", "--expanded_dir", tmp_path / "exp" / "none",
                 "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_expand_num_on_a_folder_without_copy_numbers_is_one_line(tmp_path):
    """--expand_num filters on the <stem>_expand_<k> names the expander writes; a hand-made folder
    (trained with --allow_partial) has none, which is said in one line, not a traceback."""
    root = make_tree(tmp_path / "tree", classes=("cat", "dog"))
    expanded = make_tree(tmp_path / "exp", classes=("cat", "dog")) / "train"
    with pytest.raises(DistDiffError, match=r"--expand_num: .*0\.png is not named <stem>_expand_<k>"):
        run_main("train_expand", f"folder:{root}", *TINY, "--exp", "x", "--expanded_dir", expanded,
                 "--output", tmp_path / "out", "--allow_partial", "--expand_num", "1")
    assert not list((tmp_path / "out").rglob("results.json"))
