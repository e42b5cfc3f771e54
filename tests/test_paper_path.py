"""A rehearsal of the paper's path, offline: SD-1.4 by Hub id, Caltech-101, ResNet-50 at 224 px,
512-px sampling, run with the README's commands as written in a fresh copy of the repository.

Stand-ins with the real shapes replace the downloads: a tiny pipeline in CompVis/stable-diffusion-
v1-4's layout inside a temporary Hugging Face cache under that repo id, and a folder with the
Caltech-101 download's layout (embedded/rehearsal.py). Only size knobs are added to the commands:
--shots 2 (prepare), --epochs 1 (training), a source limit, batch size and 2 shards
(expansion), and SEEDS (retraining); and --device cpu, because the GPU index the commands pass is
an error on a machine without CUDA (never a silent CPU run).
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import copy_repo, run_main, script_env

pytestmark = pytest.mark.slow
SD14 = "CompVis/stable-diffusion-v1-4"
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards")
KEPT = ["Faces", "Leopards"]  # BACKGROUND_Google and Faces_easy are dropped
RUN = Path("checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1")
EXPANSION = Path("checkpoint/caltech-101/expansions/distdiff_x5")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """Stand-ins, a fresh copy of the repository, and a shell that runs commands in it."""
    from embedded.rehearsal import fabricate_caltech101, install_in_hf_cache
    from embedded.sd_shapes import save_rehearsal_pipeline

    root = tmp_path_factory.mktemp("paper")
    clone = copy_repo(root / "clone")
    raw = root / "downloads"
    fabricate_caltech101(raw, CLASSES, per_class=4)
    prompts = [f"a photo of a {c}" for c in KEPT]
    install_in_hf_cache(save_rehearsal_pipeline(root / "sd14", prompts), SD14, root / "hf" / "hub")
    env = dict(script_env(), HF_HOME=str(root / "hf"), HF_HUB_CACHE=str(root / "hf" / "hub"),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(clone),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # `python` = this venv

    def run(command, **extra_env):
        proc = subprocess.run(command, shell=True, cwd=clone, env=dict(env, **extra_env),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc
    return {"clone": clone, "raw": raw, "run": run, "hf_cache": root / "hf" / "hub"}


@pytest.fixture(scope="module")
def prepared(paper):
    return paper["run"](f"python scripts/prepare_data.py caltech-101 --source {paper['raw']} --shots 2")


@pytest.fixture(scope="module")
def guide(paper, prepared):
    return paper["run"]("python train_original.py caltech-101 resnet50 0.1 False 0 --epochs 1 --device cpu")


@pytest.fixture(scope="module")
def expanded(paper, guide):
    # The authors' launcher, shards started together, 5 copies per source image; 2 shards (not
    # the launcher's 4) because each process pays the imports on one of the 2 cores.
    shards = " & ".join(f"sh scripts/exps/expand_diff.sh 5 0 {s}" for s in range(2))
    return paper["run"](f"{shards} & wait", TOTAL_SPLIT="2", EXTRA="--limit 2 --batch_size 2 --device cpu")


@pytest.fixture(scope="module")
def retrained(paper, expanded):
    return paper["run"]("sh scripts/exps/train_expand.sh caltech-101 resnet50 0.1 distdiff_x5 False 0",
                        SEEDS="1", EXTRA="--epochs 1 --device cpu")


def test_prepare_writes_100_class_layout_without_background_or_faces_easy(paper, prepared):
    data = paper["clone"] / "data" / "caltech-101"
    info = json.loads((data / "prepare.json").read_text())
    assert sorted(p.name for p in (data / "train").iterdir()) == KEPT
    assert info["splits"]["train"]["images"] == 2 * len(KEPT) and info["splits"]["test"]["images"] == 2 * len(KEPT)
    assert not (data / "val").exists()  # 30 (here 3) shots leave nothing to carve: no val split
    assert all(Image.open(p).mode == "RGB" for p in (data / "train").rglob("*.jpg"))


def test_guide_is_resnet50_at_224_and_the_last_epoch(paper, guide):
    run = paper["clone"] / RUN
    results = json.loads((run / "results.json").read_text())
    args = (run / "args.yaml").read_text()
    assert results["epochs"] == 1 and results["n_train"] == 4 and "test_at_best_val" not in results
    assert "arch: resnet50" in args and "image_size: 224" in args and "guide_selection: last_epoch" in args
    import torch
    best, last = (torch.load(run / name, weights_only=True) for name in ("model_best.pth.tar", "last.pt"))
    assert best["epoch"] == last["epoch"] == 1


def in_clone(paper, monkeypatch):
    """Point the in-process registry at the clone's data (verify and parse_logs need no new process)."""
    from distdiff import registry
    spec = registry.REGISTRY["caltech-101"]
    monkeypatch.setitem(registry.REGISTRY, "caltech-101",
                        dataclasses.replace(spec, root=paper["clone"] / "data" / "caltech-101"))


def test_expansion_by_hub_id_writes_512px_images_in_shards(paper, expanded, monkeypatch, capsys):
    out = paper["clone"] / EXPANSION
    images = sorted(out.rglob("*.png"))
    assert len(images) == 2 * 5  # --limit 2 sources (one per class) x 5 copies
    assert {p.parent.name for p in images} == set(KEPT)
    assert all(Image.open(p).size == (512, 512) for p in images)
    records = [json.loads(line) for m in out.glob("manifest_shard*.jsonl") for line in m.read_text().splitlines()]
    assert len(records) == 10  # the energy is measured on every 8th block of 8 items (the default): block 0
    assert sorted(r["index"] for r in records if r["energy_before"] is not None) == [0] * 5 + [2] * 3
    assert {r["guidance"] for r in records} == {"guided"}
    args = (out / "args.yaml").read_text()
    assert f"model: {SD14}" in args and "total_split" not in args
    in_clone(paper, monkeypatch)
    assert run_main("expand_distdiff", "--dataset", "caltech-101", "--expand_ratio", "5", "--limit", "2",
                    "--total_split", "2", "--checkpoint_root", paper["clone"] / "checkpoint", "--verify") == 0
    assert "10/10 images present" in capsys.readouterr().out


def test_retraining_and_parse_logs(paper, retrained, capsys):
    runs = paper["clone"] / "checkpoint/caltech-101/resnet50_unpretrained_distdiff_x5_lr0.1"
    results = json.loads((runs / "seed1" / "results.json").read_text())
    assert results["n_train"] == 4 + 10 and results["epochs"] == 1
    run_main("parse_logs", paper["clone"] / "checkpoint/caltech-101", "--multi")
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| resnet50")}
    assert set(rows) == {"resnet50_unpretrained_lr0.1", "resnet50_unpretrained_distdiff_x5_lr0.1"}
    assert rows["resnet50_unpretrained_distdiff_x5_lr0.1"].split("|")[2].strip() == "1"  # n seeds


def test_the_authors_expand_diff_argument_list_runs_unchanged(paper, guide, monkeypatch):
    """Their scripts/exps/expand_diff.sh command for split 0 of 4, pasted after expand_distdiff.py,
    with one size knob appended (--limit 1: one source image)."""
    import huggingface_hub.constants as hub

    from test_fidelity import AUTHORS_ARGS
    in_clone(paper, monkeypatch)
    monkeypatch.chdir(paper["clone"])  # their paths are relative to the repository
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(paper["hf_cache"]))
    assert run_main("expand_distdiff", *AUTHORS_ARGS, "--limit", "1") == 0
    out = paper["clone"] / "data/caltech-101_expansion/save/distdiff_batch_5x"
    images = sorted(out.rglob("*.png"))
    # 1 source x 5 copies = 5 items in one block of 8; split 0 of 4 owns block 0 (batch 1 or any
    # other: ownership does not depend on the batch size).
    assert len(images) == 5
    assert all(Image.open(p).size == (512, 512) for p in images)
    assert (out / "prototypes.npz").is_file() and (out / "manifest_shard0.jsonl").is_file()
