"""studies/eval_expansion.py on tiny folders with a random guide: identical sets give FID ~ 0 and
precision = recall = 1, a shifted set scores worse, prototype distances match a direct computation,
and the k-NN metrics behave at their extremes."""
import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance, ImageFilter

from conftest import DIGITS, run_main
from embedded.rehearsal import save_random_guide
from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff.features import extract_features
from studies.metrics import manifold_metrics
from distdiff.prototype_store import fingerprint, save_prototypes
from distdiff.prototypes import compute_prototypes

CLASSES = [str(i) for i in range(10)]


def train_features(model, spec):
    """L2-normalised guide features and labels of the training split (as build_prototypes does)."""
    transform = ds.test_transform(32, 36)
    return extract_features(model, ds.load_split(spec, spec.train_split, transform), "cpu")


def write_prototypes(folder, guide_path, spec, features, labels, fprint=None):
    """prototypes.npz + args.yaml as expand_distdiff.py leaves them."""
    root = spec.split_dir(spec.train_split)
    files = [str(p.relative_to(root)) for p in sorted(root.rglob("*.png"))]
    class_p, group_p, mask = compute_prototypes(features.numpy(), labels.numpy(), len(CLASSES), 3, "kmeans")
    save_prototypes(folder / "prototypes.npz", class_p, group_p, mask, CLASSES,
                    fprint or fingerprint(guide_path, files, "kmeans", 3))
    (folder / "args.yaml").write_text(yaml.safe_dump({"dataset": "digits", "cluster": "kmeans", "num_groups": 3}))
    return class_p


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, digits_ready):
    """Run the script once on: A = val images, B = A brightened and blurred, reference = A."""
    root = tmp_path_factory.mktemp("eval")
    guide_path = root / "guide.pth.tar"
    model = save_random_guide(guide_path, DIGITS)
    same, shifted = root / "same", root / "shifted"
    shutil.copytree(digits_ready.split_dir("val"), same)
    for path in same.rglob("*.png"):
        target = shifted / path.relative_to(same)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            ImageEnhance.Brightness(img.convert("RGB")).enhance(1.6).filter(ImageFilter.GaussianBlur(1.5)).save(target)
    features, labels = train_features(model, digits_ready)
    class_protos = write_prototypes(same, guide_path, digits_ready, features, labels)
    write_prototypes(shifted, guide_path, digits_ready, features, labels, fprint="from-another-guide")
    out = root / "all.json"
    stdout, stderr = io.StringIO(), io.StringIO()  # a module fixture has no capsys
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        run_main("studies.eval_expansion", same, shifted, "--guide_ckpt", guide_path, "--real", same,
                 "--out", out, "--threads", "1")
    proc = SimpleNamespace(stdout=stdout.getvalue(), stderr=stderr.getvalue())
    rows = {row["set"]: row for row in json.loads(out.read_text())["rows"]}
    return {"rows": rows, "proc": proc, "same": same, "shifted": shifted, "features": features,
            "labels": labels, "class_protos": class_protos, "guide_path": guide_path}


@pytest.mark.slow
def test_identical_sets_give_zero_fid_and_full_precision_recall(evaluated):
    row = evaluated["rows"]["same"]
    assert row["n_images"] == 200 and abs(row["fid"]) < 1e-3, row
    assert row["precision"] == 1.0 and row["recall"] == 1.0 and row["coverage"] == 1.0
    assert 0.0 <= row["guide_acc"] <= 1.0
    assert json.loads((evaluated["same"] / "eval_metrics.json").read_text())["fid"] == row["fid"]


@pytest.mark.slow
def test_guide_acc_from_features_equals_a_full_classifier_pass(evaluated):
    """The metric reuses the FID pass's pre-logits features; here the whole model runs again."""
    from studies.metrics import load_eval_classifier
    model, transform, classes = load_eval_classifier(evaluated["guide_path"], len(CLASSES))
    for name in ("same", "shifted"):
        folder = ds.image_folder(evaluated[name], transform, verify=False)
        with torch.no_grad():
            predicted = torch.cat([model(x).argmax(1) for x, _ in torch.utils.data.DataLoader(folder, batch_size=64)])
        names = [folder.classes[t] for _, t in folder.samples]
        expected = float(np.mean([classes[p] == n for p, n in zip(predicted.tolist(), names)]))
        assert evaluated["rows"][name]["guide_acc"] == pytest.approx(expected)


@pytest.mark.slow
def test_shifted_set_scores_worse(evaluated):
    same, shifted = evaluated["rows"]["same"], evaluated["rows"]["shifted"]
    assert shifted["fid"] > 0.01 and shifted["fid"] > 100 * abs(same["fid"]), (shifted["fid"], same["fid"])
    assert shifted["precision"] + shifted["recall"] < 2.0


@pytest.mark.slow  # its fixture builds a run: out of the quick tier
def test_prototype_distances_match_direct_computation(evaluated):
    rows = evaluated["rows"]
    # The original row scores the training split against the prototypes built from it.
    features, labels = evaluated["features"], evaluated["labels"]
    direct = np.linalg.norm(features.numpy() - evaluated["class_protos"][labels.numpy()], axis=1).mean()
    assert rows["original"]["class_proto_dist"] == pytest.approx(direct, rel=1e-4)
    assert rows["original"]["group_proto_dist"] <= rows["original"]["class_proto_dist"] + 1e-6  # K=3: own group
    # A prototypes file from another guide is never used.
    assert rows["shifted"]["class_proto_dist"] is None and "another guide" in evaluated["proc"].stderr
    assert "| same |" in evaluated["proc"].stdout and "| original |" in evaluated["proc"].stdout


def test_manifold_metrics_extremes():
    torch.manual_seed(0)
    real = torch.randn(50, 8)
    # Identical sets: every sample lies in its own ball and, on average, in the balls of the k
    # samples whose k-NN radius reaches it, so density is (k + 1) / k.
    for k in (3, 5):
        assert manifold_metrics(real, real.clone(), k=k) == pytest.approx(
            {"precision": 1.0, "recall": 1.0, "coverage": 1.0, "density": (k + 1) / k})
    far = manifold_metrics(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_bad_folders_are_clear_errors(tmp_path, digits_ready):
    with pytest.raises(DistDiffError, match="nope not found"):
        run_main("studies.eval_expansion", tmp_path / "nope", "--dataset", "digits")
    (tmp_path / "bare" / "0").mkdir(parents=True)
    with pytest.raises(DistDiffError, match="pass --dataset"):  # no args.yaml names the dataset
        run_main("studies.eval_expansion", tmp_path / "bare")
