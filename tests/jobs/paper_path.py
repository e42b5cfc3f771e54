"""The paper's path as the README gives it, run whole in a fresh copy of the repository on offline
stand-ins (tests/test_paper_path.py reads what it leaves):

    python tests/jobs/paper_path.py WORKDIR

Stand-ins with the real shapes replace the downloads: a tiny pipeline in CompVis/stable-diffusion-
v1-4's layout inside a temporary Hugging Face cache under that repo id, and a folder with the
Caltech-101 download's layout (embedded/rehearsal.py). The README's block runs as one bash script,
backgrounded shards and `wait` included, from the guide's training to parse_logs; its first two
lines (the venv, and the Caltech-101 download, which needs the network) are replaced by the
preparation from the stand-in folder that their comment offers, and the last line is the
all-at-once alternative. Only size knobs are added, by a `python` on PATH that appends them to
the stage scripts' arguments: --epochs 1 (training), --limit 2 --batch_size 2 --num_steps 10
--guidance_step 4 (expansion: 5 denoising steps for the paper's 25, the guided one included),
SEEDS=1 (retraining), and --device cpu, because the GPU index the commands pass is an error on a
machine without CUDA (never a silent CPU run). Then the authors' own expand_diff.sh argument list
runs after expand_distdiff.py, with size knobs after it (--limit 1 --expand_ratio 2, and the block's
--num_steps 10 --guidance_step 4). Beside these, from the start, the README's "Your own dataset" block (its GPU
lines: SD-1.4 by Hub id, ResNet-50) on a fabricated tree at my_data/ of 3 classes x 4 training
images, with a dataset.yaml of prompt words and no val/ (so 2 per class are held out), under the
same size knobs and smaller shapes (32-px training, 64-px sampling): the paper block checks the
real shapes, and this block the folder dataset's path.

Writes WORKDIR/steps.json: per step its command, exit code and output; a failed preparation stops
the paper steps. Started by tests/conftest.py in the background, so it uses the second core, after it
called prepare(WORKDIR) (the SD-1.4-shaped pipeline; built here when missing).
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
from conftest import AUTHORS_ARGS, REPO, copy_repo, script_env  # noqa: E402

SD14 = "CompVis/stable-diffusion-v1-4"
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards")
KEPT = ["Faces", "Leopards"]  # BACKGROUND_Google and Faces_easy are dropped
# Size knobs per stage script, appended by the `python` on PATH (the README's lines stay as written).
KNOBS = {"train_original.py": ["--epochs", "1", "--device", "cpu"],
         "expand_distdiff.py": ["--limit", "2", "--batch_size", "2", "--num_steps", "10", "--guidance_step", "4",
                                "--device", "cpu"],
         "train_expand.py": ["--epochs", "1", "--device", "cpu"]}
SMALL = ["--image_size", "32", "--resize_size", "36"]
OWN_KNOBS = {"train_original.py": KNOBS["train_original.py"] + SMALL,
             "expand_distdiff.py": KNOBS["expand_distdiff.py"] + ["--resolution", "64"],
             "train_expand.py": KNOBS["train_expand.py"] + SMALL}
# The step's table comes in the environment (REHEARSAL_KNOBS, JSON; none: no knobs).
SHIM = """#!{python}
import json, os, sys
knobs = json.loads(os.environ.get("REHEARSAL_KNOBS", "{{}}"))
args = sys.argv[1:]
extra = knobs.get(os.path.basename(args[0]), []) if args else []
os.execv({python!r}, [{python!r}, *args, *extra])
"""


def readme_paper_block():
    """The README's lines from the guide's training to parse_logs under "The paper's setting"."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The paper's setting"):]
    lines = re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("python train_original.py"))
    last = next(i for i, line in enumerate(lines) if line.startswith("python parse_logs.py"))
    return lines[first:last + 1]


OWN_CLASSES = {"class_000": "red kite", "class_001": "blue whale", "class_002": "green sea turtle"}


def readme_own_block():
    """The README's lines from train_original.py to parse_logs.py under "Your own dataset"."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own dataset"):]
    lines = re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    return [line for line in lines if line.startswith("python ")]


def prepare(work):
    """The tiny pipeline in SD-1.4's layout and 512-px shapes, at WORKDIR/sd14; its tokenizer knows
    the prompts' words (both blocks' classes)."""
    from embedded.sd_shapes import save_rehearsal_pipeline
    prompts = [f"a photo of a {c}" for c in [*KEPT, *OWN_CLASSES.values()]]
    return save_rehearsal_pipeline(Path(work) / "sd14", prompts)


def main(work):
    from embedded.rehearsal import fabricate_caltech101, install_in_hf_cache

    work = Path(work)
    clone = copy_repo(work / "clone")
    fabricate_caltech101(work / "downloads", CLASSES, per_class=4)
    sd14 = work / "sd14" if (work / "sd14" / "model_index.json").is_file() else prepare(work)
    install_in_hf_cache(sd14, SD14, work / "hf" / "hub")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(SHIM.format(python=sys.executable))
    (bin_dir / "python").chmod(0o755)
    env = dict(script_env(), HF_HOME=str(work / "hf"), HF_HUB_CACHE=str(work / "hf" / "hub"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(clone), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("DISTDIFF_DATA_ROOT", None)  # as in a fresh clone: the datasets go to the clone's data/
    block = readme_paper_block()
    from embedded.rehearsal import fabricate_folder_dataset
    fabricate_folder_dataset(clone / "my_data", len(OWN_CLASSES), train=4, test=2)
    (clone / "my_data" / "dataset.yaml").write_text("classes:\n" + "".join(f"  {k}: {v}\n" for k, v in OWN_CLASSES.items()))
    steps = [("prepare", f"python scripts/prepare_data.py caltech-101 --source {work / 'downloads'} --shots 2", {}),
             ("readme_block", "set -e\n" + "\n".join(block) + "\n", {"SEEDS": "1", "REHEARSAL_KNOBS": json.dumps(KNOBS)}),
             # their split 0 of 4 (its paths are relative to the repository), one source image in two
             # copies (their batch of 1: two batches); this venv's python, not the one on PATH that adds
             # the block's knobs
             ("authors_args", " ".join([sys.executable, "expand_distdiff.py", *AUTHORS_ARGS, "--limit", "1",
                                        "--expand_ratio", "2", "--num_steps", "10", "--guidance_step", "4"]), {})]
    own = ("own_dataset", "set -e\n" + "\n".join(readme_own_block()) + "\n", {"REHEARSAL_KNOBS": json.dumps(OWN_KNOBS)})
    report = {"clone": str(clone), "hf_cache": str(work / "hf" / "hub"), "block": block, "steps": []}

    def start(name, command, extra):
        """The step as a bash process, its output to files (a pipe could fill up while it waits)."""
        out, err = open(work / f"{name}.out", "w+"), open(work / f"{name}.err", "w+")
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=dict(env, **extra), stdout=out, stderr=err,
                                text=True)
        return {"name": name, "command": command, "proc": proc, "files": (out, err), "start": time.time()}

    def finish(step):
        code = step["proc"].wait(timeout=900)
        seconds = round(time.time() - step["start"], 1)
        out, err = step["files"]
        text = []
        for f in (out, err):
            f.seek(0)
            text.append(f.read())
            f.close()
        return {"name": step["name"], "command": step["command"], "returncode": code, "stdout": text[0][-20000:],
                "stderr": text[1][-6000:], "seconds": seconds}

    # The own-dataset block shares nothing with the others (its own tree and checkpoint folder), so it
    # runs beside them. The authors' argument list needs only the block's guide: it starts once the
    # guide's results.json is written (its checkpoint before it), beside the rest of the block, so
    # the job does not end on it alone (it was the suite's last 13 s, on one core).
    beside = start(*own)
    report["steps"].append(finish(start(*steps[0])))
    if not report["steps"][-1]["returncode"]:
        block = start(*steps[1])
        guide = clone / AUTHORS_ARGS[AUTHORS_ARGS.index("--encoder_weight_path") + 1]
        while block["proc"].poll() is None and not (guide.parent / "results.json").is_file():
            time.sleep(0.5)
        authors = start(*steps[2])
        report["steps"] += [finish(block), finish(authors)]
    report["steps"].append(finish(beside))
    (work / "steps.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
