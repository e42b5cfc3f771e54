"""SD-1.4 (and SD-2.1-base) shaped networks built from their published configs on the meta device:
parameter counts within 1 % of the published ones, and the one-line refusal to expand with them."""
import pytest

from conftest import run_main
from distdiff import DistDiffError
from embedded.sd_shapes import build_shape

# Parameter counts of CompVis/stable-diffusion-v1-4 and stabilityai/stable-diffusion-2-1-base.
PUBLISHED = {"sd14": {"unet": 860e6, "vae": 84e6, "text_encoder": 123e6},
             "sd21base": {"unet": 866e6, "vae": 84e6, "text_encoder": 340e6}}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_models(name):
    parts = build_shape(name, device="meta")  # nothing is allocated
    for part, published in PUBLISHED[name].items():
        count = sum(p.numel() for p in parts[part].parameters())
        assert parts[part].device.type == "meta"
        assert abs(count - published) / published < 0.01, (part, count)
    assert parts["unet"].config.sample_size * 2 ** (len(parts["vae"].config.block_out_channels) - 1) == 512
    assert parts["tokenizer"].model_max_length == 77


def test_expansion_refuses_random_weight_shapes(digits_ready, random_guide, tmp_path):
    with pytest.raises(DistDiffError, match="shape:sd14 is an architecture with random weights"):
        run_main("expand_distdiff", "--dataset", "digits", "--model", "shape:sd14", "--guide_ckpt", random_guide,
                 "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()
