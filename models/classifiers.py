"""Classifier registry (all built with timm) and the penultimate-feature function.

The same feature function serves prototypes and the guidance energy: the global-pooled
backbone output before the classifier head (`forward_head(..., pre_logits=True)`).
"""
import torch
import timm
from timm.models.resnet import BasicBlock, ResNet

# Short names used on the command line (the authors' spellings) -> timm model ids.
TIMM_ARCHS = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "resnext50": "resnext50_32x4d",
    "wideresnet50": "wide_resnet50_2",
    "mobilenetv2": "mobilenetv2_100",
    "clip_vit_b32": "vit_base_patch32_clip_224.openai",  # CLIP ViT-B/32 image tower (OpenAI weights)
}
# Extra timm.create_model arguments per arch.
TIMM_KWARGS = {
    # The ViT is built for 224 px (a 7x7 grid of 32 px patches) and loads its pretrained weights at
    # that grid; dynamic_img_size resamples the position embeddings to the input's patch grid at
    # run time, so the same model (and checkpoint) runs on 32 px digits (a 1x1 grid) and on 224 px
    # crops without threading the image size through every loader, and dynamic_img_pad pads sides
    # that are not multiples of 32. For pretrained CLIP features on small images, upsample the input
    # instead (--image_size 224 --resize_size 256): a 32 px image as one patch is far from what CLIP saw.
    "clip_vit_b32": dict(dynamic_img_size=True, dynamic_img_pad=True),
}
SMALL_ARCHS = ("resnet_small",)
ARCHS = tuple(sorted(TIMM_ARCHS)) + SMALL_ARCHS


class UnknownArch(ValueError):
    """Raised for names outside ARCHS."""


class WeightsUnavailable(RuntimeError):
    """Raised when pretrained weights can be neither found in the local cache nor downloaded."""


def small_resnet(num_classes, in_chans=3):
    """A 4-stage BasicBlock ResNet (about 0.3M params, 128-d features) for 32x32 inputs.

    timm's ImageNet stem (7x7 stride 2 + max-pool) would shrink 32 px to 8 px before the
    first block, so the stem becomes one 3x3 stride-2 conv without max-pool: layer1 sees 16 px,
    a quarter of the compute of the stride-1 CIFAR stem, which matters on 2 CPU cores. The 'deep'
    stem type with width 8 only sets the stem's output width (16) that layer1 expects.
    """
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep",
                   stem_width=8, num_classes=num_classes, in_chans=in_chans)
    model.conv1 = torch.nn.Conv2d(in_chans, 16, kernel_size=3, stride=2, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def check_arch(arch, pretrained=False):
    """Raise UnknownArch for names outside ARCHS (and pretrained weights that do not exist)."""
    if arch not in ARCHS:
        raise UnknownArch(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if pretrained and arch in SMALL_ARCHS:
        raise UnknownArch(f"{arch} has no pretrained weights; use --pretrained False")


def create_classifier(arch, num_classes, pretrained=False):
    """Build a registered classifier with a fresh `num_classes` head."""
    check_arch(arch, pretrained)
    if arch in SMALL_ARCHS:
        return small_resnet(num_classes)
    try:
        return timm.create_model(TIMM_ARCHS[arch], pretrained=pretrained, num_classes=num_classes,
                                 **TIMM_KWARGS.get(arch, {}))
    except OSError as err:  # offline, not cached, HTTP errors: huggingface_hub raises OSErrors
        if not pretrained:
            raise
        raise WeightsUnavailable(weights_hint(arch, err)) from None


def hub_model_id(arch):
    """The Hugging Face Hub repo timm downloads `arch`'s pretrained weights from."""
    cfg = timm.models.get_pretrained_cfg(TIMM_ARCHS[arch])
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return hub_id or f"timm/{TIMM_ARCHS[arch]}"


def weights_hint(arch, err):
    """One line: which weights are missing and how to bring them onto an offline machine."""
    hub_id = hub_model_id(arch)
    reason = " ".join(str(err).split()).split(". ")[0][:160]  # the first sentence says enough
    return (f"cannot load pretrained weights for {arch} ({hub_id}) from the Hugging Face cache or the Hub "
            f"({type(err).__name__}: {reason}); on a machine with internet run `hf download {hub_id}` "
            f"(older huggingface_hub: `huggingface-cli download {hub_id}`), copy its Hugging Face cache "
            f"(~/.cache/huggingface) here or point HF_HOME at the copy, or use --pretrained False")


def penultimate_features(model, images):
    """Global-pooled pre-logits features [B, D] (differentiable)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def logits_from_penultimate(model, features):
    """Class logits from `penultimate_features` output: timm's forward_head ends in the classifier."""
    return model.get_classifier()(features)


def num_parameters(model):
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
