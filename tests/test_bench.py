"""The expansion benchmark runs in quick mode and writes a complete JSON report (no timing asserts)."""
import json

import pytest

from conftest import run_main


@pytest.mark.slow
def test_bench_quick_mode_writes_json(tmp_path, tiny_pipe, random_guide, capsys):
    # Throughput does not depend on what the guide has learned: a random one will do.
    out = tmp_path / "bench.json"
    run_main("studies.bench_expand", "--quick", "--model", tiny_pipe, "--guide_ckpt", random_guide,
             "--variants", "plain", "checkpointing+decode_half",
             "--threads", "1", "--out", out, "--figure", tmp_path / "bench.png")
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    plain = report["variants"]["plain"]
    assert set(report["variants"]) == {"plain", "checkpointing+decode_half"}
    for mode in ("none", "transform"):
        for bs in ("2",):
            entry = plain["results"][mode][bs]
            assert entry["s_per_image"] > 0 and entry["peak_mb"] > 0 and len(entry["measured_seconds"]) == 1
    stages = plain["stages_s_one_guided_batch"]
    for stage in ("vae_encode", "denoise_unet", "lookahead_unet", "guide_forward", "guidance_backward",
                  "final_decode", "image_write"):
        assert stages[stage] > 0, stage
    assert stages["guidance_step"] >= stages["guidance_backward"]  # nested stages count inside their parent
    assert set(plain["time_ratio_guided_unguided"]) == {"2"}
    limits = report["memory_limits"]["plain"]
    assert limits["activation_mb_per_image"]["fp16"] == limits["activation_mb_per_image"]["fp32"] / 2
    assert "| plain | 2 |" in stdout and (tmp_path / "bench.png").stat().st_size > 0


def test_suite_benchmark_charges_each_process_to_its_background_job():
    """studies/bench_suite.py: a process counts for the rehearsal it runs under (a child of
    tests/jobs/chain.py, however deep), else for the pytest process; programs by script name."""
    from studies.bench_suite import heavy_processes, summarise

    def record(key, parent, cmdline, cpu):
        return {"key": key, "parent": parent, "cmdline": cmdline, "cpu_s": cpu}
    seen = {r["key"]: r for r in (
        record(1, None, "/v/bin/python -m pytest -q", 10.0),
        record(2, 1, "nice -n 4 /v/bin/python tests/jobs/chain.py /tmp/w", 3.0),
        record(3, 2, "bash single_exp.sh", 0.1),
        record(4, 3, ".venv/bin/python expand_distdiff.py --dataset digits", 5.0),
        record(5, 1, "/v/bin/python expand_distdiff.py --dataset x", 4.0),
        record(6, 3, ".venv/bin/python -m distdiff.runs missing", 0.2))}
    jobs, programs = summarise(seen)
    assert jobs == {"pytest (in-process tests)": 14.0, "tests/jobs/chain.py": 8.3}
    assert programs["expand_distdiff.py"] == {"cpu_s": 9.0, "processes": 2, "heavy": 2}
    assert programs["-m distdiff.runs"] == {"cpu_s": 0.2, "processes": 1, "heavy": 0}
    heavy = heavy_processes(seen)
    assert [(row["job"], row["cpu_s"]) for row in heavy] == [
        ("pytest (in-process tests)", 10.0), ("tests/jobs/chain.py", 5.0), ("pytest (in-process tests)", 4.0),
        ("tests/jobs/chain.py", 3.0)]


def test_suite_benchmark_samples_a_grandchild_it_never_started(tmp_path):
    """The /proc sampler finds a process two levels below the one it watches and reads its CPU."""
    import subprocess
    import sys
    import time

    from studies.bench_suite import Sampler, summarise

    busy = tmp_path / "busy.py"
    busy.write_text("import time\nt = time.time()\nwhile time.time() - t < 0.5:\n    pass\n")
    # `; true` keeps each bash from exec-ing its command: bash -> bash -> python
    proc = subprocess.Popen(["bash", "-c", f"bash -c '{sys.executable} {busy}; true'; true"])
    sampler = Sampler(proc.pid)
    while proc.poll() is None:
        sampler.poll()
        time.sleep(0.01)
    jobs, programs = summarise(sampler.seen)
    assert programs[str(busy)]["processes"] == 1 and programs[str(busy)]["cpu_s"] > 0, programs
    python = next(r for r in sampler.seen.values() if r["cmdline"].startswith(sys.executable))
    assert sampler.seen[python["parent"]]["cmdline"].startswith("bash -c")  # its parent, the inner bash
    assert list(jobs) == ["pytest (in-process tests)"]


def test_suite_benchmark_calibrates_with_the_median_of_fresh_processes():
    """calibrate(): the median CPU seconds of fresh processes (here a busy loop of about 0.2 s)."""
    import sys

    from studies.bench_suite import calibrate
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2:\n    pass"
    assert 0.2 <= calibrate([sys.executable, "-c", busy], 3) < 2
