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
# The authors' CLIP guide: open_clip's ViT-B/32 with LAION-2B weights (timm holds its image tower with
# the projection as the head), features = encode_image (512-d), and a class head initialised from
# the class prompts' normalised text embeddings (the text tower through transformers).
AUTHORS_CLIP = "open_clip_vit_b32"
AUTHORS_CLIP_TIMM = "vit_base_patch32_clip_224.laion2b"
AUTHORS_CLIP_TEXT = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
ARCHS = tuple(sorted([*TIMM_ARCHS, AUTHORS_CLIP])) + SMALL_ARCHS


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


class ClipGuide(torch.nn.Module):
    """The authors' `open_clip_vit_b32`: CLIP's image tower and projection (encode_image, the
    512-d features the energy uses), then `fc`, a linear class head. timm's forward_features /
    forward_head / get_classifier, so prototypes, guidance and training treat it as any other."""

    def __init__(self, num_classes, pretrained=False, class_prompts=None, text_model=AUTHORS_CLIP_TEXT):
        super().__init__()
        self.clip = timm.create_model(AUTHORS_CLIP_TIMM, pretrained=pretrained, **TIMM_KWARGS["clip_vit_b32"])
        self.fc = torch.nn.Linear(self.clip.num_classes, num_classes)
        if pretrained and class_prompts:  # as theirs: weights = normalised text embeddings, bias 0
            with torch.no_grad():
                self.fc.weight.copy_(text_embeddings(class_prompts, text_model))
                self.fc.bias.zero_()

    def forward_features(self, images):
        return self.clip.forward_features(images)

    def forward_head(self, features, pre_logits=False):
        embedded = self.clip.forward_head(features)  # through the projection: open_clip's encode_image
        return embedded if pre_logits else self.fc(embedded)

    def forward(self, images):
        return self.forward_head(self.forward_features(images))

    def get_classifier(self):
        return self.fc


def text_embeddings(prompts, model_id=AUTHORS_CLIP_TEXT):
    """[C, D] L2-normalised CLIP text embeddings of the prompts (transformers, from the HF cache)."""
    from transformers import CLIPModel, CLIPTokenizer

    model, tokenizer = CLIPModel.from_pretrained(model_id).eval(), CLIPTokenizer.from_pretrained(model_id)
    with torch.no_grad():
        tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")
        embedded = model.get_text_features(**tokens)
        embedded = getattr(embedded, "pooler_output", embedded)  # a tensor, or an output object in newer versions
    return embedded / embedded.norm(dim=-1, keepdim=True)


def check_arch(arch, pretrained=False):
    """Raise UnknownArch for names outside ARCHS (and pretrained weights that do not exist)."""
    if arch not in ARCHS:
        raise UnknownArch(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if pretrained and arch in SMALL_ARCHS:
        raise UnknownArch(f"{arch} has no pretrained weights; use --pretrained False")


def create_classifier(arch, num_classes, pretrained=False, class_prompts=None):
    """Build a registered classifier with a fresh `num_classes` head (the authors' CLIP guide: a
    head from `class_prompts`' text embeddings when pretrained)."""
    check_arch(arch, pretrained)
    if arch in SMALL_ARCHS:
        return small_resnet(num_classes)
    try:
        if arch == AUTHORS_CLIP:
            return ClipGuide(num_classes, pretrained, class_prompts)
        return timm.create_model(TIMM_ARCHS[arch], pretrained=pretrained, num_classes=num_classes,
                                 **TIMM_KWARGS.get(arch, {}))
    except OSError as err:  # offline, not cached, HTTP errors: huggingface_hub raises OSErrors
        if not pretrained:
            raise
        raise WeightsUnavailable(weights_hint(arch, err)) from None


def hub_model_id(arch):
    """The Hugging Face Hub repo timm downloads `arch`'s pretrained weights from."""
    cfg = timm.models.get_pretrained_cfg(AUTHORS_CLIP_TIMM if arch == AUTHORS_CLIP else TIMM_ARCHS[arch])
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return hub_id or f"timm/{TIMM_ARCHS[arch]}"


def weights_hint(arch, err):
    """One line: which weights are missing and how to bring them onto an offline machine."""
    hub_id = hub_model_id(arch) + (f" and {AUTHORS_CLIP_TEXT}" if arch == AUTHORS_CLIP else "")  # + its text tower
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
