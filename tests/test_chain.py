"""single_exp.sh end to end on a tiny configuration, then a resumed rerun after a 'crash'."""
import os
import subprocess

import pytest

from conftest import REPO, script_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_pipe):
    """Run the full chain once: tiny untrained pipeline, 10 sources, 1 epoch, 1 seed."""
    root = tmp_path_factory.mktemp("chain")
    env = dict(script_env(), MODEL=str(tiny_pipe), SEEDS="1", EPOCHS="1", LIMIT="10", RATIO="2", EQITER="0",
               CHECKPOINT=str(root / "ckpt"), FIGURE_DIR=str(root / "fig"),
               EXPAND_FLAGS="--num_steps 10 --guidance_step 4 --threads 1")

    def run():
        proc = subprocess.run(["bash", "single_exp.sh"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc
    return {"root": root, "run": run, "first": run()}


def results_files(root):
    return sorted((root / "ckpt" / "digits").rglob("results.json"))


def test_chain_prints_the_three_row_table_and_figures(chain):
    out = chain["first"].stdout
    rows = [line for line in out.splitlines() if line.startswith("| resnet_small")]
    names = [r.split("|")[1].strip() for r in rows]
    for name in ("resnet_small_unpretrained_lr0.1", "resnet_small_unpretrained_sd_x2_lr0.1",
                 "resnet_small_unpretrained_distdiff_x2_lr0.1"):
        assert name in names, out[-3000:]
    assert "vs resnet_small_unpretrained_sd_x2_lr0.1" in out  # the paired table
    assert len(results_files(chain["root"])) == 3  # original and the two expansions
    for fig in ("accuracy.png", "expansion_grid.png"):
        assert (chain["root"] / "fig" / fig).stat().st_size > 1000


def test_rerun_after_crash_redoes_only_the_missing_run(chain):
    files = results_files(chain["root"])
    crashed = next(f for f in files if "distdiff_x2_lr" in str(f))
    crashed.unlink()  # as if the chain died during this run's last epoch
    images = sorted((chain["root"] / "ckpt" / "digits" / "expansions").rglob("*.png"))
    before = {f: os.stat(f).st_mtime_ns for f in files if f != crashed}
    image_times = {f: os.stat(f).st_mtime_ns for f in images}
    out = chain["run"]().stdout
    assert crashed.is_file()
    assert all(os.stat(f).st_mtime_ns == t for f, t in before.items())
    assert all(os.stat(f).st_mtime_ns == t for f, t in image_times.items())
    assert out.count("is complete (results.json exists)") == 0  # finished runs never start Python
    assert out.count("written 0, skipped 20 (every image present)") == 2
