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
}
SMALL_ARCHS = ("resnet_small",)
ARCHS = tuple(sorted(TIMM_ARCHS)) + SMALL_ARCHS


class UnknownArch(ValueError):
    """Raised for names outside ARCHS."""


def small_resnet(num_classes, in_chans=3):
    """A 4-stage BasicBlock ResNet (about 0.3M params, 128-d features) for 32x32 inputs.

    timm's ImageNet stem (7x7 stride 2 + max-pool) would shrink 32 px to 8 px before the
    first block, so the stem becomes one 3x3 stride-1 conv, as in CIFAR ResNets. The 'deep'
    stem type with width 8 only sets the stem's output width (16) that layer1 expects.
    """
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_type="deep",
                   stem_width=8, num_classes=num_classes, in_chans=in_chans)
    model.conv1 = torch.nn.Conv2d(in_chans, 16, kernel_size=3, stride=2, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model


def create_classifier(arch, num_classes, pretrained=False):
    """Build a registered classifier with a fresh `num_classes` head."""
    if arch in SMALL_ARCHS:
        if pretrained:
            raise UnknownArch(f"{arch} has no pretrained weights; use --pretrained False")
        return small_resnet(num_classes)
    if arch not in TIMM_ARCHS:
        raise UnknownArch(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return timm.create_model(TIMM_ARCHS[arch], pretrained=pretrained, num_classes=num_classes)


def penultimate_features(model, images):
    """Global-pooled pre-logits features [B, D] (differentiable)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def num_parameters(model):
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
