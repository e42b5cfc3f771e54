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
