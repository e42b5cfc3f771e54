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


@pytest.mark.slow
def test_the_authors_clip_guide_encodes_images_to_512_and_classifies_with_its_fc():
    """open_clip_vit_b32 (their guide): CLIP's image tower with its projection gives the 512-d
    encode_image features that prototypes and the energy use, and fc maps them to the classes."""
    from models.classifiers import ARCHS, penultimate_features
    assert "open_clip_vit_b32" in ARCHS
    model = create_classifier("open_clip_vit_b32", 7, pretrained=False).eval()
    images = torch.randn(2, 3, 32, 32)
    features = penultimate_features(model, images)
    assert features.shape == (2, 512) and model(images).shape == (2, 7)
    assert torch.allclose(model.get_classifier()(features), model(images))


def test_the_clip_head_starts_from_the_prompts_normalised_text_embeddings(tmp_path):
    """Their head: fc.weight = the class prompts' text embeddings, L2-normalised, bias 0; here
    through transformers' CLIPModel (a tiny one saved locally stands in for LAION-2B's)."""
    from transformers import CLIPConfig, CLIPModel

    from embedded.prior import build_tokenizer
    from models.classifiers import text_embeddings
    prompts = ["a photo of a cat.", "a photo of a dog.", "a photo of a cow."]
    tokenizer = build_tokenizer(prompts)
    config = CLIPConfig(text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16),
                        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    weights = text_embeddings(prompts, str(tmp_path / "clip"))
    assert weights.shape == (3, 8) and torch.allclose(weights.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(weights[0], weights[1])


@pytest.mark.slow
def test_a_pretrained_clip_guide_takes_its_head_from_the_text_embeddings(monkeypatch):
    """The wiring (weights offline are a stand-in: timm builds the tower without downloading)."""
    import timm

    from models import classifiers
    real = timm.create_model
    monkeypatch.setattr(classifiers.timm, "create_model", lambda name, pretrained=False, **kw: real(name, **kw))
    embeddings = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    asked = []
    monkeypatch.setattr(classifiers, "text_embeddings", lambda prompts, model_id: asked.append(prompts) or embeddings)
    model = classifiers.create_classifier("open_clip_vit_b32", 3, pretrained=True, class_prompts=["a", "b", "c"])
    assert asked == [["a", "b", "c"]] and torch.equal(model.fc.weight, embeddings) and not model.fc.bias.any()
