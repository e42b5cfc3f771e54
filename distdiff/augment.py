"""Transform-based augmentations stacked on the paper's recipe (`--aug`, the paper's Tab. 1).

Per-image augmentations join the random tail of the training transform: AutoAugment and
RandAugment work on uint8 images, so they run before the float conversion; RandomErasing and
GridMask blank regions of the normalised tensor (the erased value 0 is the dataset mean).
MixUp and CutMix mix whole batches, so the training step applies them (`batch_transform`) and
trains on the soft targets they return. Every draw comes from torch's global RNG, which the
engine seeds and stores in last.pt, so augmented runs resume exactly like plain ones.
"""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from distdiff import DistDiffError

# name -> what it adds to the paper's Resize/RandomRotation/RandomCrop/Flip recipe
AUGMENTATIONS = {
    "default": "the paper's recipe only",
    "autoaug": "AutoAugment, ImageNet policy (uint8, before ToDtype)",
    "randaug": "RandAugment, 2 ops at magnitude 9 (uint8, before ToDtype)",
    "augmix": "AugMix severity 3, width 3, alpha 1, without the JSD loss (uint8, before ToDtype)",
    "augmix_jsd": "the authors' AugMix baseline: the image and two AugMix views of it, cross-entropy on the image "
                  "plus 12 x the Jensen-Shannon consistency of the three (uint8, before ToDtype)",
    "randerasing": "RandomErasing p=0.5, area 2-33 %, filled with the mean (after Normalize)",
    "cutout": "the authors' name for randerasing (their train_transform.py: torchvision's RandomErasing defaults "
              "after Normalize)",
    "gridmask": "GridMask r=0.6, unit 43-100 % of the side, p=0.8 (after Normalize)",
    "mixup": "MixUp alpha=1 on each batch, soft-label cross-entropy",
    "cutmix": "CutMix alpha=1 on each batch, soft-label cross-entropy",
    "cutmix_authors": "CutMix per image as the authors' baseline: p=0.5, up to 2 boxes, beta=1, a partner from "
                      "the batch",
}
BATCH_AUGMENTATIONS = ("mixup", "cutmix", "cutmix_authors")


def check_aug(name):
    """Return `name` if it is a known augmentation, else a one-line DistDiffError."""
    if name not in AUGMENTATIONS:
        raise DistDiffError(f"unknown --aug {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    return name


def help_text():
    """The --aug help string: every choice with what it does."""
    return "; ".join(f"{name}: {what}" for name, what in AUGMENTATIONS.items())


def uint8_transforms(name):
    """Per-image augmentations that expect uint8 images (inserted before ToDtype)."""
    if check_aug(name) == "autoaug":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    if name == "randaug":
        return [v2.RandAugment(num_ops=2, magnitude=9)]
    if name == "augmix":  # the AugMix paper's defaults, as the authors' augment_and_mix; one view, no JSD
        return [augmix()]
    if name == "augmix_jsd":
        return [AugMixViews()]
    return []


def augmix():
    """AugMix at the AugMix paper's defaults, which the authors' augment_and_mix uses."""
    return v2.AugMix(severity=3, mixture_width=3, chain_depth=-1, alpha=1.0)


class AugMixViews(torch.nn.Module):
    """[C, H, W] uint8 -> [3, C, H, W]: the image and two independent AugMix draws of it (their
    AugMixDataset with no_jsd=False); ToDtype and Normalize then act on the three views alike."""

    def __init__(self):
        super().__init__()
        self.augmix = augmix()

    def forward(self, image):
        return torch.stack([torch.as_tensor(image), torch.as_tensor(self.augmix(image)),
                            torch.as_tensor(self.augmix(image))])


def views_loss(name):
    """The training loss for a batch of stacked views ([B, 3, C, H, W], augmix_jsd), else None."""
    return jsd_views_loss if check_aug(name) == "augmix_jsd" else None


def jsd_views_loss(logits, labels, weight=12.0):
    """The authors' AugMix objective (train_transform.py lines 388-403) on the logits of 3 stacked
    views [3B, K], the plain view first: cross-entropy of the plain view plus `weight` times the
    mean KL divergence of each view's softmax from their mixture (clamped at 1e-7 before the log)."""
    plain, first, second = logits.float().chunk(3)
    probs = [torch.softmax(x, dim=-1) for x in (plain, first, second)]
    mixture = torch.clamp(sum(probs) / 3.0, 1e-7, 1).log()
    consistency = sum(torch.nn.functional.kl_div(mixture, p, reduction="batchmean") for p in probs) / 3.0
    return torch.nn.functional.cross_entropy(plain, labels) + weight * consistency


def normalized_transforms(name, image_size):
    """Per-image augmentations applied to the normalised float tensor (after Normalize)."""
    if check_aug(name) in ("randerasing", "cutout"):
        return [v2.RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0)]
    if name == "gridmask":
        # The paper's ImageNet setting (d in [96, 224] at 224 px), scaled to the crop size.
        return [GridMask(d_min=max(2, round(image_size * 96 / 224)), d_max=image_size, ratio=0.6, p=0.8)]
    return []


def batch_transform(name, num_classes):
    """MixUp or CutMix over a batch (images, int labels) -> (images, soft targets); else None."""
    if check_aug(name) == "mixup":
        return v2.MixUp(alpha=1.0, num_classes=num_classes)
    if name == "cutmix":
        return v2.CutMix(alpha=1.0, num_classes=num_classes)
    if name == "cutmix_authors":
        return SampleCutMix(num_classes)
    return None


class SampleCutMix:
    """CutMix the way the authors' augmentation baseline runs it (the `cutmix` package: CutMix(...,
    beta=1.0, prob=0.5, num_mix=2) on the dataset). Each image, independently and `num_mix` times,
    with probability `p` gets a box of a partner image pasted in; the box's side is sqrt(1 - lam) of
    the image's (lam ~ Beta(beta, beta)), centred uniformly and clipped at the borders, and the
    target moves to the partner by the box's area (target * lam + partner * (1 - lam), theirs too, so
    a second box over the first counts the pixels it covers again). Theirs draws the partner from the whole dataset;
    here it is drawn from the batch (a random sample of it: the same partner distribution, the image
    itself included with chance 1/B). Draws come from torch's global RNG, as the other batch
    transforms', so a resumed run repeats them."""

    def __init__(self, num_classes, p=0.5, num_mix=2, beta=1.0):
        self.num_classes, self.p, self.num_mix = num_classes, p, num_mix
        self.beta = torch.distributions.Beta(torch.tensor(float(beta)), torch.tensor(float(beta)))

    def __call__(self, images, labels):
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        mixed, targets = images.clone(), onehot.clone()
        height, width = images.shape[-2:]
        for i in range(len(images)):
            for _ in range(self.num_mix):
                if torch.rand(()).item() > self.p:
                    continue
                cut = (1.0 - self.beta.sample().item()) ** 0.5
                j = int(torch.randint(len(images), ()).item())
                cy, cx = int(torch.randint(height, ()).item()), int(torch.randint(width, ()).item())
                h, w = int(height * cut), int(width * cut)
                y1, y2 = max(cy - h // 2, 0), min(cy + h // 2, height)
                x1, x2 = max(cx - w // 2, 0), min(cx + w // 2, width)
                mixed[i, :, y1:y2, x1:x2] = images[j, :, y1:y2, x1:x2]  # the partner as loaded, unmixed
                lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
                targets[i] = targets[i] * lam + onehot[j] * (1.0 - lam)
        return mixed, targets


def _is_image(inpt):
    """GridMask touches images only: tv_tensors.Image and plain tensors, not masks or boxes."""
    return isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor


class GridMask(v2.Transform):
    """GridMask (Chen et al., 2020): zero a regular grid of square blocks of the image.

    One draw picks the unit size d uniformly from the integers [d_min, d_max] and a random
    offset (dy, dx) in [0, d); within every d x d unit a square of side s = round((1 - r) d)
    is set to 0, tiled periodically over the whole image. r is the paper's ratio of the
    shorter kept (gray) edge of a unit, so the paper's keep ratio is k = 1 - (1 - r)^2 and,
    because the offset is uniform and the grid covers the image, every pixel is masked with
    probability (s / d)^2 ~ (1 - r)^2. The mask is applied with probability p, so the expected
    masked fraction is p (1 - r)^2 (r = 0.6, p = 0.8: 12.8 %). The paper also rotates the mask
    and raises p during training; both are left out, so a draw never depends on the epoch.

    Parameters: d_min, d_max (unit size range in pixels), ratio (r in [0, 1)), p (probability).
    """

    _transformed_types = (_is_image,)

    def __init__(self, d_min, d_max, ratio=0.6, p=0.8):
        super().__init__()
        if not 1 <= d_min <= d_max:
            raise ValueError(f"GridMask needs 1 <= d_min <= d_max, got {d_min}, {d_max}")
        if not 0.0 <= ratio < 1.0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"GridMask needs 0 <= ratio < 1 and 0 <= p <= 1, got {ratio}, {p}")
        self.d_min, self.d_max, self.ratio, self.p = int(d_min), int(d_max), float(ratio), float(p)

    def block_side(self, d):
        """Side of the masked square in a unit of size d."""
        return round((1.0 - self.ratio) * d)

    def make_params(self, flat_inputs):
        height, width = next(x for x in flat_inputs if isinstance(x, torch.Tensor)).shape[-2:]
        if torch.rand(1).item() >= self.p:
            return {"mask": None}
        d = int(torch.randint(self.d_min, self.d_max + 1, (1,)).item())
        offset_y, offset_x = torch.randint(0, d, (2,)).tolist()
        side = self.block_side(d)
        rows = (torch.arange(height) - offset_y).remainder(d) < side
        cols = (torch.arange(width) - offset_x).remainder(d) < side
        return {"mask": rows[:, None] & cols[None, :]}

    def transform(self, inpt, params):
        if params["mask"] is None:
            return inpt
        masked = inpt.masked_fill(params["mask"].to(inpt.device), 0)
        # Plain tensor ops drop the tv_tensor type; keep it for the transforms that follow.
        return tv_tensors.wrap(masked, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else masked
