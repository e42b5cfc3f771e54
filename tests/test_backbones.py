"""clip_vit_b32 (CLIP ViT-B/32 through timm) as a retrain backbone and as a guide at 32 px, and a
clear one-line error when its pretrained weights cannot be loaded offline."""
import pytest
import torch

from distdiff import DistDiffError
from distdiff.registry import IMAGENET_MEAN, IMAGENET_STD
from distdiff.features import GuideInput, guide_features
from conftest import run_main
from models.classifiers import ARCHS, create_classifier, penultimate_features


@pytest.fixture(scope="module")
def clip_model():
    """ViT-B/32 (88M parameters) built once, random weights, frozen as a guide is."""
    torch.manual_seed(0)
    return create_classifier("clip_vit_b32", 10, pretrained=False).eval().requires_grad_(False)


def test_clip_vit_b32_is_registered():
    assert "clip_vit_b32" in ARCHS


@pytest.mark.slow
def test_clip_vit_b32_forward_and_features_at_32px_and_224px(clip_model):
    with torch.no_grad():
        for side, batch in ((32, 4), (224, 1)):  # digits' size (1x1 patch grid), the pretrained 7x7 grid
            images = torch.randn(batch, 3, side, side)
            assert clip_model(images).shape == (batch, 10)
            features = penultimate_features(clip_model, images)
            assert features.shape == (batch, 768) and torch.isfinite(features).all()


@pytest.mark.slow
def test_clip_vit_b32_as_guide_is_differentiable(clip_model):
    meta = {"resize_size": 36, "image_size": 32, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    decoded = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()  # VAE output range [-1, 1]
    features = guide_features(clip_model, GuideInput(meta), decoded)
    features.sum().backward()
    assert features.shape == (2, 768) and decoded.grad.abs().sum() > 0


@pytest.mark.slow
def test_pretrained_clip_offline_names_the_hub_model(tmp_path, digits_ready):
    # conftest sets HF_HUB_OFFLINE=1 and the cache is empty, as on an offline machine. The scripts
    # print a DistDiffError as its one line (run_cli), so one line in, one line out.
    with pytest.raises(DistDiffError) as err:
        run_main("train_original", "digits", "--arch", "clip_vit_b32", "--pretrained", "True", "--epochs", "1",
                 "--threads", "1", "--output", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "timm/vit_base_patch32_clip_224.openai" in message
    assert "hf download" in message and "HF_HOME" in message
    assert not (tmp_path / "digits").exists()  # no half-made run dir
