"""scripts/gpu_check.sh: its CPU mode runs every step with tiny shapes (so the GPU acceptance run
cannot rot), and a step that fails, hangs or cannot run never hides the others."""
import json
import time

import pytest
import torch

from conftest import background_result, run_main, script

HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "DISTDIFF_DATA_ROOT", "HF_HUB_DISABLE_PROGRESS_BARS",
           "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")


@pytest.fixture
def restore_env(monkeypatch, tmp_path):
    """gpu_check.main points the Hugging Face variables at its work dir; undo that afterwards."""
    for name in HF_VARS:
        monkeypatch.setenv(name, "restored-after-test")


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_the_report(request):
    """bash scripts/gpu_check.sh --cpu_smoke, run in the background from the start of the session
    (tests/conftest.py BACKGROUND_CHECKS)."""
    code, stdout, stderr, work = background_result(request.node.nodeid)
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    steps = json.loads((work / "report.json").read_text())["steps"]
    assert [s["name"] for s in steps] == [name for name, *_ in script("scripts.gpu_check").STEPS]
    assert all(s["status"] == "PASS" for s in steps), [(s["name"], s["status"], s["detail"]) for s in steps]
    for step in steps:  # one line per step, printed as it finished
        assert f"PASS  {step['name']} (" in stdout
    numbers = {s["name"]: s["numbers"] for s in steps}
    assert numbers["gradients"]["fp16 scaled"]["cosine"] > 0.99
    assert numbers["expand"]["written"] == 10 and numbers["expand"]["lost_guidance"] == 0
    assert numbers["torchrun"]["max_diff"] <= 2
    assert numbers["memory"]["predicted_gib"]["plain"] > numbers["memory"]["predicted_gib"]["checkpointed"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_a_gpu_the_run_fails_in_one_step_and_skips_the_rest(tmp_path, capsys, restore_env):
    assert run_main("scripts.gpu_check", "--workdir", tmp_path, "--report", tmp_path / "r.json") == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("FAIL  versions") and "torch sees no CUDA device" in lines[0]
    assert all(line.startswith("SKIP") for line in lines[1:-1]) and len(lines) == 2 + 7
    assert json.loads((tmp_path / "r.json").read_text())["steps"][0]["status"] == "FAIL"


@pytest.mark.slow
def test_a_failing_hanging_or_skipped_step_is_reported_and_never_raises():
    check = script("scripts.gpu_check")

    def fails(ctx):
        raise RuntimeError("kernel image not available")

    def hangs(ctx):
        time.sleep(5)

    def skips(ctx):
        raise check.Skip("one GPU only")
    assert check.run_step(None, fails, 10, False)[:2] == ("FAIL", "RuntimeError: kernel image not available")
    start = time.time()
    status, detail, _ = check.run_step(None, hangs, 1, False)
    assert status == "FAIL" and "ran past its cap of 1 s" in detail and time.time() - start < 4
    assert check.run_step(None, skips, 10, False)[:2] == ("SKIP", "one GPU only")


def test_the_budget_skips_steps_whose_cap_no_longer_fits(tmp_path, capsys, restore_env):
    assert run_main("scripts.gpu_check", "--cpu_smoke", "--budget", "100", "--workdir", tmp_path,
                    "--report", tmp_path / "r.json") == 0
    steps = {s["name"]: s for s in json.loads((tmp_path / "r.json").read_text())["steps"]}
    assert steps["versions"]["status"] == "PASS"  # cap 30 s fits the 100 s budget
    assert steps["pipeline"]["status"] == "SKIP" and "not started" in steps["pipeline"]["detail"]  # cap 150 s
    assert steps["gradients"]["status"] == "SKIP" and "earlier step" in steps["gradients"]["detail"]
