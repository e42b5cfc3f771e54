"""Bad input ends with one 'error: ...' line, a non-zero exit and no traceback."""
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_script

TINY = ["--epochs", "1", "--arch", "resnet_small", "--image_size", "32", "--resize_size", "36",
        "--threads", "1"]


def make_tree(root, classes=("a", "b"), per_class=3):
    """A small ImageFolder tree with train/ and test/."""
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.new("RGB", (32, 32), (40 * i + 5 * k, 100, 200 - 30 * i)).save(folder / f"{k}.png")
    return root


def test_unknown_dataset_lists_known(tmp_path):
    proc = run_script("train_original.py", "no-such-set", "--output", tmp_path, check=False)
    last = assert_one_line_error(proc, "unknown dataset", "digits", "caltech-101")
    assert "folder:<path>" in last


def test_unknown_arch_lists_known(tmp_path, digits_ready):
    proc = run_script("train_original.py", "digits", "resnet9000", "--output", tmp_path, check=False)
    assert_one_line_error(proc, "unknown arch", "resnet50", "resnet_small")


def test_missing_data_dir_says_how_to_prepare(tmp_path):
    proc = run_script("train_original.py", "caltech-101", "--output", tmp_path, check=False)
    assert_one_line_error(proc, "not found", "prepare_data.py caltech-101")
    proc = run_script("train_original.py", f"folder:{tmp_path / 'nothing'}", *TINY,
                      "--output", tmp_path, check=False)
    assert_one_line_error(proc, "not found")


def test_empty_class_dir(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "train" / "c").mkdir()
    proc = run_script("train_original.py", f"folder:{root}", *TINY, "--output", tmp_path / "out",
                      check=False)
    assert_one_line_error(proc, "c")
    assert not list((tmp_path / "out").rglob("results.json"))


def test_corrupt_image_names_the_file(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "train" / "b" / "broken.png").write_bytes(b"not a png at all")
    proc = run_script("train_original.py", f"folder:{root}", *TINY, "--output", tmp_path / "out",
                      check=False)
    assert_one_line_error(proc, "broken.png")


def test_cuda_without_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root = make_tree(tmp_path / "tree")
    proc = run_script("train_original.py", f"folder:{root}", *TINY, "--device", "cuda",
                      "--output", tmp_path / "out", check=False)
    assert_one_line_error(proc, "cuda", "--device cpu")


def test_folder_dataset_trains_on_a_temp_tree(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("cat", "dog", "emu"))
    run_script("train_original.py", f"folder:{root}", *TINY, "--output", tmp_path / "out")
    results = list((tmp_path / "out").rglob("results.json"))
    assert len(results) == 1 and "folder_tree" in str(results[0])


def test_train_expand_rejects_mismatched_classes(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("cat", "dog"))
    expanded = make_tree(tmp_path / "exp", classes=("cat", "emu")) / "train"
    proc = run_script("train_expand.py", f"folder:{root}", *TINY, "--exp", "x", "--expanded_dir", expanded,
                      "--output", tmp_path / "out", check=False)
    assert_one_line_error(proc, "expanded set", "dog", "emu")
    assert not (tmp_path / "out").exists()
