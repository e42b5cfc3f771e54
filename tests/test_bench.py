"""The expansion benchmark runs in quick mode and writes a complete JSON report (no timing asserts)."""
import json

from conftest import run_script, save_random_guide


def test_bench_quick_mode_writes_json(tmp_path, digits_ready):
    from distdiff.datasets import get_dataset
    from models.prior import build_tiny_pipeline

    spec = get_dataset("digits")
    pipe = build_tiny_pipeline(tmp_path / "pipe", [spec.prompt(str(d)) for d in range(10)])
    guide = tmp_path / "guide.pth.tar"
    save_random_guide(guide)  # throughput does not depend on what the guide has learned
    out = tmp_path / "bench.json"
    proc = run_script("scripts/bench_expand.py", "--quick", "--model", pipe, "--guide_ckpt", guide,
                      "--threads", "1", "--out", out, "--figure", tmp_path / "bench.png")
    report = json.loads(out.read_text())
    for mode in ("none", "transform"):
        for bs in ("1", "2"):
            entry = report["results"][mode][bs]
            assert entry["images_per_s"] > 0 and entry["peak_mb"] > 0 and len(entry["seconds"]) == 1
    stages = report["stages_ms_one_guided_batch"]
    for stage in ("vae_encode", "denoise_unet", "lookahead_unet", "guide_forward", "guidance_backward",
                  "image_write"):
        assert stages[stage] > 0, stage
    assert set(report["time_ratio_guided_unguided"]) == {"1", "2"}
    assert "| 2 |" in proc.stdout and (tmp_path / "bench.png").stat().st_size > 0
