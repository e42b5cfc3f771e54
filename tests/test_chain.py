"""single_exp.sh end to end on a tiny configuration, then a resumed rerun after a 'crash'.

tests/jobs/chain.py runs both, started in the background when the session collects these tests
(tests/conftest.py), so they use the second core while the in-process tests run; the tests here
check what it recorded.
"""
import json
from pathlib import Path

import pytest

from conftest import background_result

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain():
    code, stdout, stderr, work = background_result("chain")
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((work / "chain.json").read_text())
    first = report["first"]
    assert first["returncode"] == 0, first["stdout"][-4000:] + first["stderr"][-4000:]
    return report


def test_chain_prints_the_three_row_table_and_figures(chain):
    out = chain["first"]["stdout"]
    rows = [line for line in out.splitlines() if line.startswith("| resnet_small")]
    names = [r.split("|")[1].strip() for r in rows]
    for name in ("resnet_small_unpretrained_lr0.1", "resnet_small_unpretrained_sd_x2_lr0.1",
                 "resnet_small_unpretrained_distdiff_x2_lr0.1"):
        assert name in names, out[-3000:]
    assert "vs resnet_small_unpretrained_sd_x2_lr0.1" in out  # the paired table
    assert len(chain["results"]) == 3  # original and the two expansions
    for fig in ("accuracy.png", "expansion_grid.png"):
        assert (Path(chain["root"]) / "fig" / fig).stat().st_size > 1000


def test_rerun_after_crash_redoes_only_the_missing_run(chain):
    second = chain["second"]
    assert second["returncode"] == 0, second["stdout"][-4000:] + second["stderr"][-4000:]
    assert chain["crashed_back"] and chain["images"] == 40  # 10 sources x 2 copies x 2 expansions
    assert chain["after"] == chain["before"]  # the finished runs were not touched
    assert chain["images_after"] == chain["images_before"]
    out = second["stdout"]
    assert out.count("is complete (results.json exists)") == 0  # finished runs never start Python
    assert out.count("written 0, skipped 20 (every image present)") == 2


def test_the_readme_cpu_line_for_your_own_dataset_prints_its_table(chain):
    """The README's "Your own dataset" CPU line, as written but for the tree's and the prior's
    paths and size knobs: the chain runs on a folder tree without val/ and prints the table."""
    assert chain["own_line"].startswith("DATASET=folder:my_data MODEL=checkpoint/prior/digits ARCH=resnet_small")
    own = chain["own"]
    assert own["returncode"] == 0, own["stdout"][-4000:] + own["stderr"][-4000:]
    names = [line.split("|")[1].strip() for line in own["stdout"].splitlines() if line.startswith("| resnet_small")]
    for exp in ("", "_sd_x5", "_distdiff_x5"):
        assert f"resnet_small_unpretrained{exp}_lr0.1" in names, own["stdout"][-3000:]
    args = (Path(own["checkpoint"]) / "folder_my_data" / "resnet_small_unpretrained_lr0.1" / "seed1" / "args.yaml")
    text = args.read_text()
    assert "epochs: 30" in text and "image_size: 32" in text and "2 per class held out of train/" in text
