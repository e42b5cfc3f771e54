"""A rehearsal of the paper's path, offline: SD-1.4 by Hub id, Caltech-101, ResNet-50 at 224 px,
512-px sampling, run with the README's commands as written in a fresh copy of the repository.

Stand-ins with the real shapes replace the downloads: a tiny pipeline in CompVis/stable-diffusion-
v1-4's layout inside a temporary Hugging Face cache under that repo id, and a folder with the
Caltech-101 download's layout (embedded/rehearsal.py). The README's block runs as one bash script,
backgrounded shards and `wait` included, from the guide's training to parse_logs; its first two
lines (the venv, and the Caltech-101 download, which needs the network) are replaced by the
preparation from the stand-in folder that their comment offers, and the last line is the
all-at-once alternative. Only size knobs are added, by a `python` on PATH that appends them to
the stage scripts' arguments: --epochs 1 (training), --limit 2 --batch_size 2 (expansion),
SEEDS=1 (retraining), and --device cpu, because the GPU index the commands pass is an error on a
machine without CUDA (never a silent CPU run).
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO, copy_repo, run_main, script_env

pytestmark = pytest.mark.slow
SD14 = "CompVis/stable-diffusion-v1-4"
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards")
KEPT = ["Faces", "Leopards"]  # BACKGROUND_Google and Faces_easy are dropped
RUN = Path("checkpoint/caltech-101/resnet50_unpretrained_lr0.1/seed1")
EXPANSION = Path("checkpoint/caltech-101/expansions/distdiff_x5")


# Size knobs per stage script, appended by the `python` on PATH (the README's lines stay as written).
KNOBS = {"train_original.py": ["--epochs", "1", "--device", "cpu"],
         "expand_distdiff.py": ["--limit", "2", "--batch_size", "2", "--device", "cpu"],
         "train_expand.py": ["--epochs", "1", "--device", "cpu"]}
SHIM = """#!{python}
import os, sys
knobs = {knobs!r}
args = sys.argv[1:]
extra = knobs.get(os.path.basename(args[0]), []) if args else []
os.execv({python!r}, [{python!r}, *args, *extra])
"""


def readme_paper_block():
    """The README's bash block under "The paper's setting", as lines."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The paper's setting"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()


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
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(SHIM.format(python=sys.executable, knobs=KNOBS))
    (bin_dir / "python").chmod(0o755)
    env = dict(script_env(), HF_HOME=str(root / "hf"), HF_HUB_CACHE=str(root / "hf" / "hub"),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(clone), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def run(command, **extra_env):
        proc = subprocess.run(["bash", "-c", command], cwd=clone, env=dict(env, **extra_env),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc
    return {"clone": clone, "raw": raw, "run": run, "hf_cache": root / "hf" / "hub"}


@pytest.fixture(scope="module")
def prepared(paper):
    return paper["run"](f"python scripts/prepare_data.py caltech-101 --source {paper['raw']} --shots 2")


@pytest.fixture(scope="module")
def block(paper, prepared):
    """The README block from the guide's training to parse_logs, as one bash script."""
    lines = readme_paper_block()
    first = next(i for i, line in enumerate(lines) if line.startswith("python train_original.py"))
    last = next(i for i, line in enumerate(lines) if line.startswith("python parse_logs.py"))
    lines = lines[first:last + 1]
    assert sum(line.startswith("sh scripts/exps/expand_diff.sh") and line.split("#")[0].rstrip().endswith("&")
               for line in lines) == 4 and any(line.split()[:1] == ["wait"] for line in lines)
    return paper["run"]("set -e\n" + "\n".join(lines) + "\n", SEEDS="1")


def test_prepare_writes_100_class_layout_without_background_or_faces_easy(paper, prepared):
    data = paper["clone"] / "data" / "caltech-101"
    info = json.loads((data / "prepare.json").read_text())
    assert sorted(p.name for p in (data / "train").iterdir()) == KEPT
    assert info["splits"]["train"]["images"] == 2 * len(KEPT) and info["splits"]["test"]["images"] == 2 * len(KEPT)
    assert not (data / "val").exists()  # 30 (here 3) shots leave nothing to carve: no val split
    assert all(Image.open(p).mode == "RGB" for p in (data / "train").rglob("*.jpg"))


def test_guide_is_resnet50_at_224_and_the_last_epoch(paper, block):
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


def test_expansion_by_hub_id_writes_512px_images_in_shards(paper, block, monkeypatch, capsys):
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


def test_retraining_and_parse_logs(paper, block, capsys):
    runs = paper["clone"] / "checkpoint/caltech-101/resnet50_unpretrained_distdiff_x5_lr0.1"
    results = json.loads((runs / "seed1" / "results.json").read_text())
    assert results["n_train"] == 4 + 10 and results["epochs"] == 1
    args = yaml.safe_load((runs / "seed1" / "args.yaml").read_text())
    assert [(e["written"], e["expected"]) for e in args["expansions"]] == [(10, 10)] and not args["allow_partial"]
    assert "| resnet50_unpretrained_distdiff_x5_lr0.1 |" in block.stdout  # the block ends with the table
    run_main("parse_logs", paper["clone"] / "checkpoint/caltech-101", "--multi")
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| resnet50")}
    assert set(rows) == {"resnet50_unpretrained_lr0.1", "resnet50_unpretrained_distdiff_x5_lr0.1"}
    assert rows["resnet50_unpretrained_distdiff_x5_lr0.1"].split("|")[2].strip() == "1"  # n seeds


def test_the_authors_expand_diff_argument_list_runs_unchanged(paper, block, monkeypatch):
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
