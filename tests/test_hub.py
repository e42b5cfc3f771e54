"""Hub ids: a model in the Hugging Face cache resolves without any network call, whether
HF_HUB_OFFLINE is set or not; a download asks for the loaded components only (no safety
checker); and the SD-1.4 stand-in has SD-1.4's file layout and loads by Hub id like a snapshot."""
import json
from types import SimpleNamespace

import pytest
import torch

from distdiff import DistDiffError

SD14 = "CompVis/stable-diffusion-v1-4"
PROMPTS = ["a photo of a Faces", "a photo of a Leopards"]
# The files of CompVis/stable-diffusion-v1-4's main branch, which a download chooses from.
SD14_REPO_FILES = (
    ".gitattributes", "README.md", "feature_extractor/preprocessor_config.json", "model_index.json",
    "safety_checker/config.json", "safety_checker/model.fp16.safetensors", "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin", "safety_checker/pytorch_model.fp16.bin", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.safetensors",
    "v1-variants-scores.jpg", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.bin", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """The tiny SD-1.4 stand-in, saved once and installed as SD14 in a temporary Hugging Face cache."""
    from embedded.rehearsal import install_in_hf_cache
    from embedded.sd_shapes import save_rehearsal_pipeline

    root = tmp_path_factory.mktemp("hub")
    snapshot = install_in_hf_cache(save_rehearsal_pipeline(root / "sd14", PROMPTS), SD14, root / "cache")
    return {"snapshot": snapshot, "cache": root / "cache"}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub as on a GPU node where HF_HUB_OFFLINE is unset but the Hub is out of reach:
    every HTTP request it makes is recorded and fails. Returns the requested URLs."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent
    from huggingface_hub.utils import httpx as hub_http  # the HTTP client huggingface_hub uses

    requests = []

    def unreachable(client, request, *args, **kwargs):
        requests.append(str(request.url))
        raise hub_http.ConnectError("the Hub is out of reach in this test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, at import
    monkeypatch.setattr(hub_http.Client, "send", unreachable)
    # huggingface_hub fetches a telemetry registry once per process and keeps it in HF_HOME: start
    # without either, so that fetching it would show here too.
    monkeypatch.setattr(_detect_agent, "_registry", None)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    return requests


def use_cache(monkeypatch, cache):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_a_cached_model_resolves_without_any_network_call(stand_in, online, monkeypatch):
    from huggingface_hub import constants

    from distdiff.pipeline import resolve_model

    use_cache(monkeypatch, stand_in["cache"])
    assert resolve_model(SD14).resolve() == stand_in["snapshot"].resolve()
    assert online == []
    assert constants.HF_HUB_OFFLINE is False  # the look-up's offline mode ends with it


def test_a_model_neither_cached_nor_downloadable_is_one_error_line(online, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from distdiff.pipeline import resolve_model

    use_cache(monkeypatch, tmp_path / "empty_cache")
    with pytest.raises(DistDiffError) as err:
        resolve_model(SD14)
    message = str(err.value)
    assert "\n" not in message and "empty_cache" in message and f"hf download {SD14}" in message
    assert online, "online and not cached, the Hub is tried (which the fixture records)"
    online.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DistDiffError, match=r"\(HF_HUB_OFFLINE is set\)"):
        resolve_model(SD14)
    assert online == []  # offline, it is not tried at all


def test_a_download_asks_for_no_safety_checker_files(online, monkeypatch, tmp_path):
    """SD-1.4 missing from the cache, online: the Hub's answers (the file listing, model_index.json)
    are stood in for at diffusers' calls, and the files its download asks for are checked."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines import pipeline_utils
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    from distdiff.pipeline import resolve_model
    from embedded.sd_shapes import SD14_MODEL_INDEX

    use_cache(monkeypatch, tmp_path / "empty_cache")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "model_index.json").write_text(json.dumps(SD14_MODEL_INDEX))
    asked = []

    def model_info(repo_id, **kwargs):
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in SD14_REPO_FILES])

    def hf_hub_download(repo_id, filename, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{filename} is not cached")
        return str(remote / filename)

    def snapshot_download(repo_id, local_files_only=False, allow_patterns=None, ignore_patterns=None, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} is not cached")
        asked.append(set(filter_repo_objects(SD14_REPO_FILES, allow_patterns=allow_patterns,
                                             ignore_patterns=ignore_patterns)))
        return str(remote)
    for name, fake in (("model_info", model_info), ("hf_hub_download", hf_hub_download),
                       ("snapshot_download", snapshot_download)):
        monkeypatch.setattr(pipeline_utils, name, fake)

    assert resolve_model(SD14) == remote
    fetched = asked[-1]
    assert [name for name in fetched if name.startswith("safety_checker/")] == []
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
            "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json"} <= fetched
    assert not [name for name in fetched if name.endswith((".bin", ".jpg")) or ".fp16." in name or "non_ema" in name]
    # The stand-ins see what a download asks for: one that passes no safety_checker fetches it.
    DiffusionPipeline.download(SD14)
    assert "safety_checker/model.safetensors" in asked[-1]


def test_the_sd14_stand_in_has_sd14s_layout_and_loads_by_hub_id(stand_in, monkeypatch):
    from distdiff.pipeline import load_pipeline
    from embedded.prior import build_tokenizer
    from embedded.sd_shapes import SD14_FILES, SD14_MODEL_INDEX

    snapshot = stand_in["snapshot"]
    files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert files == sorted(SD14_FILES)
    assert "tokenizer/tokenizer.json" not in files and "safety_checker/config.json" in files
    assert [name for name in files if name.startswith("safety_checker/")] == ["safety_checker/config.json"]
    index = json.loads((snapshot / "model_index.json").read_text())
    assert index == SD14_MODEL_INDEX and index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    scheduler = json.loads((snapshot / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["beta_schedule"] == "scaled_linear"
    assert {k: scheduler[k] for k in ("clip_sample", "steps_offset", "skip_prk_steps", "set_alpha_to_one")} == \
        {"clip_sample": False, "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False}

    use_cache(monkeypatch, stand_in["cache"])
    pipe = load_pipeline(SD14, torch.device("cpu"))
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer" and pipe.safety_checker is None
    assert type(pipe.feature_extractor).__name__ == "CLIPImageProcessor"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.steps_offset == 1
    # The tokenizer built from vocab.json + merges.txt + SD-1.4's configs gives the ids of the one
    # the stand-in was made with (padding included: SD-1.4 pads with <|endoftext|>).
    original = build_tokenizer(PROMPTS, max_length=77)
    texts = PROMPTS + ["A PHOTO of a zebra, unseen words!", ""]
    assert pipe.tokenizer(texts, padding="max_length").input_ids == original(texts, padding="max_length").input_ids
