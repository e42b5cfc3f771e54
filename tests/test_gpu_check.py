"""scripts/gpu_check.sh: its CPU mode runs every step with tiny shapes (so the GPU acceptance run
cannot rot), a step that fails, hangs or cannot run never hides the others, and only a run in
which every step passed exits 0."""
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
def test_cpu_smoke_runs_every_step_and_writes_the_report():
    """bash scripts/gpu_check.sh --cpu_smoke, run in the background from the start of the session
    (tests/conftest.py BACKGROUND_CHECKS)."""
    code, stdout, stderr, work = background_result("gpu_check_smoke")
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    steps = report["steps"]
    assert [s["name"] for s in steps] == [name for name, *_ in script("studies.gpu_check").STEPS]
    assert all(s["status"] == "PASS" for s in steps), [(s["name"], s["status"], s["detail"]) for s in steps]
    for step in steps:  # one line per step, printed as it finished
        assert f"PASS  {step['name']} (" in stdout
    assert report["exit_code"] == 0 and "PASS (exit 0): 8 of 8 steps passed" in stdout.splitlines()[-1]
    # every step after the first records the GPU memory at its start: on the CPU, that it is not measured
    assert [s["gpu_memory_at_start"] for s in steps] == [None] + ["not measured (CPU smoke)"] * (len(steps) - 1)
    numbers = {s["name"]: s["numbers"] for s in steps}
    assert numbers["gradients"]["fp16 scaled"]["cosine"] > 0.99
    assert numbers["expand"]["written"] == 10 and numbers["expand"]["lost_guidance"] == 0
    assert numbers["torchrun"]["max_diff"] <= 2
    assert "devices not checked (CPU smoke)" in steps[-2]["detail"]
    assert numbers["memory"]["predicted_gib"]["plain"] > numbers["memory"]["predicted_gib"]["checkpointed"] > 0
    injected = numbers["memory"]["injected_oom"]  # the out-of-memory retry redid the failed batch in halves
    assert injected["injected_at"] and injected["start_batch"] == 4 and injected["final_batch"] == 2
    assert injected["max_diff"] == 0
    assert numbers["speed-ups"]["flags"] == ["--channels_last", "True"]  # compile only with --with_compile


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_a_gpu_the_run_fails_in_one_step_and_skips_the_rest(tmp_path, capsys, restore_env):
    assert run_main("studies.gpu_check", "--workdir", tmp_path, "--report", tmp_path / "r.json") == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("FAIL  versions") and "torch sees no CUDA device" in lines[0]
    assert all(line.startswith("SKIP") for line in lines[1:-1]) and len(lines) == 2 + 7
    assert lines[-1].startswith("gpu_check: FAIL (exit 1): 0 of 8 steps passed; failed: versions; skipped: guide, "
                                "pipeline, gradients, memory, expand, torchrun, speed-ups;")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps"][0]["status"] == "FAIL" and report["exit_code"] == 1


@pytest.mark.slow
def test_a_failing_hanging_or_skipped_step_is_reported_and_never_raises():
    check = script("studies.gpu_check")

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
    # Nothing failed, but a run with skipped steps is not a pass: exit 2.
    assert run_main("studies.gpu_check", "--cpu_smoke", "--budget", "100", "--workdir", tmp_path,
                    "--report", tmp_path / "r.json") == 2
    steps = {s["name"]: s for s in json.loads((tmp_path / "r.json").read_text())["steps"]}
    assert steps["versions"]["status"] == "PASS"  # cap 30 s fits the 100 s budget
    assert steps["pipeline"]["status"] == "SKIP" and "not started" in steps["pipeline"]["detail"]  # cap 150 s
    assert steps["gradients"]["status"] == "SKIP" and "earlier step" in steps["gradients"]["detail"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("gpu_check: INCOMPLETE (exit 2): 1 of 8 steps passed; skipped: guide, pipeline, ")
    assert "failed" not in summary


def test_the_exit_status_is_0_only_when_every_step_passed():
    check = script("studies.gpu_check")

    def steps(*statuses):
        return [{"name": f"s{i}", "status": status} for i, status in enumerate(statuses)]
    assert check.verdict(steps("PASS", "PASS"))[0] == 0
    assert check.verdict(steps("PASS", "SKIP")) == (2, "INCOMPLETE (exit 2): 1 of 2 steps passed; skipped: s1")
    assert check.verdict(steps("FAIL", "SKIP", "PASS")) == (1, "FAIL (exit 1): 1 of 3 steps passed; failed: s0; "
                                                               "skipped: s1")
    # BatchSize halves on out-of-memory errors: 14 -> 7 -> 3 -> 1
    assert all(check.halved(14, final) for final in (7, 3, 1))
    assert not any(check.halved(14, final) for final in (14, 28, 6, 2, 0))


def test_the_ranks_devices_are_read_from_their_log_lines():
    check = script("studies.gpu_check")
    log = ("[2026-12-06 10:00:00] device cuda:1 (NVIDIA H100 80GB HBM3), LOCAL_RANK 1\n"
           "[2026-12-06 10:00:00] device cuda:0 (NVIDIA H100 80GB HBM3), LOCAL_RANK 0\n"
           "[2026-12-06 10:00:09] shard 0/2 on cuda:0, fp32, batch 8\n")
    assert check.rank_devices(log) == ({0: 0, 1: 1}, "device lines")
    # without resolve_device's lines, each shard's own line says where it ran
    found, source = check.rank_devices("shard 0/2 on cuda:0, fp32, batch 8\nshard 1/2 on cuda:0, fp32, batch 4\n")
    assert found == {0: 0, 1: 0} and source.startswith("shard lines")
