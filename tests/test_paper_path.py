"""A rehearsal of the paper's path, offline: SD-1.4 by Hub id, Caltech-101, ResNet-50 at 224 px,
512-px sampling, run with the README's commands as written in a fresh copy of the repository.

tests/jobs/paper_path.py runs it (its docstring says how, and which size knobs it adds), started
in the background when the session collects these tests, so it uses the second core while the
in-process tests run; the tests here check what it left.
"""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import background_result, run_main

pytestmark = pytest.mark.slow
SD14 = "CompVis/stable-diffusion-v1-4"
KEPT = ["Faces", "Leopards"]  # BACKGROUND_Google and Faces_easy are dropped
RUN = Path("checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1")
EXPANSION = Path("checkpoint/caltech-101/expansions/distdiff_x5")


@pytest.fixture(scope="module")
def paper():
    """The background job's report: every step ran and exited 0."""
    code, stdout, stderr, work = background_result("paper_path")
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((work / "steps.json").read_text())
    for step in report["steps"]:
        assert step["returncode"] == 0, f"{step['command']}\n{step['stdout'][-3000:]}\n{step['stderr'][-3000:]}"
    assert [step["name"] for step in report["steps"]] == ["prepare", "readme_block", "authors_args", "own_dataset"]
    steps = {step["name"]: step for step in report["steps"]}
    return {"clone": Path(report["clone"]), "block": report["block"], "steps": steps}


def test_the_readme_block_writes_out_four_backgrounded_shards_and_waits(paper):
    lines = paper["block"]
    assert sum(line.startswith("sh scripts/exps/expand_diff.sh") and line.split("#")[0].rstrip().endswith("&")
               for line in lines) == 4 and any(line.split()[:1] == ["wait"] for line in lines)
    assert lines[0].startswith("python train_original.py") and lines[-1].startswith("python parse_logs.py")


def test_prepare_writes_100_class_layout_without_background_or_faces_easy(paper):
    data = paper["clone"] / "data" / "caltech-101"
    info = json.loads((data / "prepare.json").read_text())
    assert sorted(p.name for p in (data / "train").iterdir()) == KEPT
    assert info["splits"]["train"]["images"] == 2 * len(KEPT) and info["splits"]["test"]["images"] == 2 * len(KEPT)
    assert not (data / "val").exists()  # 30 (here 3) shots leave nothing to carve: no val split
    assert all(Image.open(p).mode == "RGB" for p in (data / "train").rglob("*.jpg"))


def test_guide_is_resnet50_at_224_and_the_last_epoch(paper):
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
    spec = registry.get_dataset("caltech-101")
    monkeypatch.setitem(registry.registered(), "caltech-101",
                        dataclasses.replace(spec, root=paper["clone"] / "data" / "caltech-101"))


def test_expansion_by_hub_id_writes_512px_images_in_shards(paper, monkeypatch, capsys):
    out = paper["clone"] / EXPANSION
    images = sorted(out.rglob("*.png"))
    assert len(images) == 2 * 5  # --limit 2 sources (one per class) x 5 copies
    assert {p.parent.name for p in images} == set(KEPT)
    assert all(Image.open(p).size == (512, 512) for p in images)
    manifests = {m.name: [json.loads(line) for line in m.read_text().splitlines()] for m in out.glob("manifest_shard*.jsonl")}
    records = [r for rows in manifests.values() for r in rows]
    assert len(records) == 10 and sorted(manifests) == ["manifest_shard0.jsonl", "manifest_shard1.jsonl"]
    # the energy is measured on every 8th item of the work list (the default): one per block, so per shard
    measured = {name: [r["position"] for r in rows if r["energy_before"] is not None] for name, rows in manifests.items()}
    assert measured == {"manifest_shard0.jsonl": [0], "manifest_shard1.jsonl": [8]}
    assert {r["guidance"] for r in records} == {"guided"}
    states = [json.loads((out / f"shard{s}.json").read_text()) for s in range(4)]
    assert [(r["status"], r["total_split"], r["items"]) for r in states] == [("done", 4, 8), ("done", 4, 2),
                                                                             ("done", 4, 0), ("done", 4, 0)]
    args = (out / "args.yaml").read_text()
    assert f"model: {SD14}" in args and "total_split" not in args
    in_clone(paper, monkeypatch)
    assert run_main("expand_distdiff", "--dataset", "caltech-101", "--expand_ratio", "5", "--limit", "2",
                    "--total_split", "4", "--checkpoint_root", paper["clone"] / "checkpoint", "--verify") == 0
    assert "10/10 images present" in capsys.readouterr().out


def test_retraining_and_parse_logs(paper, capsys):
    runs = paper["clone"] / "checkpoint/caltech-101/resnet50_unpretrained_distdiff_x5_lr0.1"
    results = json.loads((runs / "seed1" / "results.json").read_text())
    assert results["n_train"] == 4 + 10 and results["epochs"] == 1
    args = yaml.safe_load((runs / "seed1" / "args.yaml").read_text())
    assert [(e["written"], e["expected"]) for e in args["expansions"]] == [(10, 10)] and not args["allow_partial"]
    assert "| resnet50_unpretrained_distdiff_x5_lr0.1 |" in paper["steps"]["readme_block"]["stdout"]  # its table
    run_main("parse_logs", paper["clone"] / "checkpoint/caltech-101", "--multi")
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| resnet50")}
    assert set(rows) == {"resnet50_unpretrained_lr0.1", "resnet50_unpretrained_distdiff_x5_lr0.1"}
    assert rows["resnet50_unpretrained_distdiff_x5_lr0.1"].split("|")[2].strip() == "1"  # n seeds


def test_the_authors_expand_diff_argument_list_runs_unchanged(paper):
    """Their scripts/exps/expand_diff.sh command for split 0 of 4, pasted after expand_distdiff.py,
    with size knobs appended (--limit 1 --expand_ratio 2: one source image, two copies; 10 DDIM
    steps, the block's)."""
    assert "expand_distdiff.py --guidance_type=transform_guidance -a resnet50" in paper["steps"]["authors_args"]["command"]
    out = paper["clone"] / "data/caltech-101_expansion/save/distdiff_batch_5x"
    images = sorted(out.rglob("*.png"))
    # 1 source x 2 copies = 2 items in one block of 8; split 0 of 4 owns block 0 (batch 1 or any
    # other: ownership does not depend on the batch size).
    assert len(images) == 2
    assert all(Image.open(p).size == (512, 512) for p in images)
    assert (out / "prototypes.npz").is_file() and (out / "manifest_shard0.jsonl").is_file()


def test_the_own_dataset_block_runs_as_written_with_prompt_words_and_a_held_out_val(paper):
    """The README's "Your own dataset" GPU lines on a 3-class tree with a dataset.yaml and no val/:
    2 of each class's 4 training images are the val split, in every stage, and the expansion
    prompts with the yaml's words."""
    clone, step = paper["clone"], paper["steps"]["own_dataset"]
    assert "python train_original.py folder:my_data --arch resnet50" in step["command"]
    root = clone / "checkpoint" / "folder_my_data"
    guide = yaml.safe_load((root / "resnet50_unpretrained_lr0.1" / "seed1" / "args.yaml").read_text())
    assert guide["n_train"] == 6 and guide["val_split_resolved"] == "2 per class held out of train/ (seed 0)"
    expansion = yaml.safe_load((root / "expansions" / "distdiff_x5" / "args.yaml").read_text())
    assert expansion["class_prompts"] == ["a photo of a red kite", "a photo of a blue whale",
                                          "a photo of a green sea turtle"]
    from distdiff import datasets as ds
    from distdiff.registry import get_dataset
    held = {"/".join(Path(p).parts[-2:]) for p, _ in ds.load_split(get_dataset(f"folder:{clone / 'my_data'}"),
                                                                    "val").samples}
    sources = {json.loads(line)["source"] for line in
               (root / "expansions" / "distdiff_x5" / "manifest_shard0.jsonl").read_text().splitlines()}
    assert len(held) == 6 and sources and not sources & held  # no val image is expanded
    retrain = yaml.safe_load((root / "resnet50_unpretrained_distdiff_x5_lr0.1" / "seed1" / "args.yaml").read_text())
    assert retrain["n_train"] == 6 + 2 * 5  # --limit 2 sources x 5 copies
    assert "| resnet50_unpretrained_distdiff_x5_lr0.1 | 1 |" in step["stdout"]
