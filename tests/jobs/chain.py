"""single_exp.sh end to end on a tiny configuration, then the same command after a 'crash'
(tests/test_chain.py reads what it leaves):

    python tests/jobs/chain.py WORKDIR

A tiny untrained pipeline, 10 sources, 2 copies, 1 epoch, 1 seed. After the first run, the
results.json of the DistDiff retraining is deleted, as if the chain died in that run's last epoch,
and the command runs again. WORKDIR/chain.json holds both runs' output and exit codes and the
modification times of every results.json and expanded image before and after the rerun. Then the
README's CPU line for your own dataset runs as written on a fabricated 3-class tree, with the tree's
and the prior's paths put in and size knobs in the environment (SEEDS=1, EQITER=0, LIMIT=2, 10
DDIM steps); its output is WORKDIR/chain.json's "own". Started by tests/conftest.py in the
background, so it uses the second core, after it called prepare(WORKDIR) (the pipeline; built
here when missing).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
from conftest import DIGITS, REPO, script_env  # noqa: E402


def mtimes(paths):
    return {str(p): os.stat(p).st_mtime_ns for p in paths}


def readme_own_chain():
    """The README's single_exp.sh line under "Your own dataset"."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own dataset"):]
    return next(line.split("#")[0].strip() for line in section.splitlines() if "bash single_exp.sh" in line)


def prepare(work):
    """The tiny untrained pipeline with the digits prompts, at WORKDIR/pipe."""
    from distdiff.registry import get_dataset
    from embedded.prior import build_tiny_pipeline
    return build_tiny_pipeline(Path(work) / "pipe", [get_dataset("digits").prompt(d) for d in DIGITS])


def main(work):
    from distdiff.registry import ensure_prepared, get_dataset

    work = Path(work)
    spec = get_dataset("digits")
    ensure_prepared(spec)
    pipe = work / "pipe" if (work / "pipe" / "model_index.json").is_file() else prepare(work)
    env = dict(script_env(), MODEL=str(pipe), SEEDS="1", EPOCHS="1", LIMIT="10", RATIO="2", EQITER="0",
               CHECKPOINT=str(work / "ckpt"), FIGURE_DIR=str(work / "fig"),
               EXPAND_FLAGS="--num_steps 10 --guidance_step 4 --threads 1")

    def run():
        proc = subprocess.run(["bash", "single_exp.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        return {"returncode": proc.returncode, "stdout": proc.stdout[-30000:], "stderr": proc.stderr[-6000:]}

    report = {"root": str(work), "first": run()}
    if report["first"]["returncode"] == 0:
        results = sorted((work / "ckpt" / "digits").rglob("results.json"))
        images = sorted((work / "ckpt" / "digits" / "expansions").rglob("*.png"))
        crashed = next(f for f in results if "distdiff_x2_lr" in str(f))
        report.update(results=[str(f) for f in results], crashed=str(crashed), images=len(images),
                      before=mtimes(f for f in results if f != crashed), images_before=mtimes(images))
        crashed.unlink()
        report["second"] = run()
        report.update(after=mtimes(Path(f) for f in report["before"]), images_after=mtimes(images),
                      crashed_back=crashed.is_file())
    if report["first"]["returncode"] == 0:
        from embedded.rehearsal import fabricate_folder_dataset
        tree = fabricate_folder_dataset(work / "my_data", 3, train=4, test=2)
        line = readme_own_chain()
        report["own_line"] = line
        command = line.replace("folder:my_data", f"folder:{tree}").replace("MODEL=checkpoint/prior/digits",
                                                                          f"MODEL={pipe}")
        own_env = dict(env, CHECKPOINT=str(work / "own_ckpt"), FIGURE_DIR=str(work / "own_fig"), LIMIT="2")
        own_env.pop("RATIO")  # the line's own: the default x5
        proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=own_env, capture_output=True, text=True,
                              timeout=900)
        report["own"] = {"returncode": proc.returncode, "stdout": proc.stdout[-30000:], "stderr": proc.stderr[-6000:],
                         "checkpoint": str(work / "own_ckpt")}
    (work / "chain.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
