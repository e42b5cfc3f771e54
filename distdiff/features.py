"""Guide-model features: batched extraction for prototypes, and the differentiable image
mapping used inside the guidance energy."""
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from models.classifiers import penultimate_features


class GuideInput(torch.nn.Module):
    """Map decoded images in [-1, 1] to the guide's input. Differentiable.

    mode "guide" (default): exactly the guide's test transform, Resize(resize_size) ->
    CenterCrop(image_size) -> Normalize(mean, std), on the image clamped to [0, 1].
    mode "authors": the authors' code, a bicubic resize of the whole raw decoder output (about
    [-1, 1], not clamped) to image_size x image_size, without antialiasing, crop or normalisation
    (so the guide sees a range and framing it was not trained on).
    """

    def __init__(self, meta, mode="guide"):
        super().__init__()
        self.mode = mode
        self.resize_size, self.image_size = meta["resize_size"], meta["image_size"]
        self.register_buffer("mean", torch.tensor(meta["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta["std"]).view(1, 3, 1, 1))

    def forward(self, images):
        if self.mode == "authors":
            return F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bicubic",
                                 align_corners=False)
        x = ((images.float() + 1) / 2).clamp(0, 1)
        x = TF.resize(x, [self.resize_size] if isinstance(self.resize_size, int) else self.resize_size,
                      antialias=True)
        x = TF.center_crop(x, [self.image_size, self.image_size])
        return (x - self.mean) / self.std


def prototype_transform(meta, mode="guide"):
    """The transform of the real images whose features make the prototypes: the guide's test
    transform, or (mode "authors") their squash of the whole image to image_size x image_size."""
    if mode == "authors":
        return v2.Compose([v2.ToImage(), v2.Resize((meta["image_size"], meta["image_size"]), antialias=True),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta["mean"], meta["std"])])
    return v2.Compose([v2.ToImage(), v2.Resize(meta["resize_size"]), v2.CenterCrop(meta["image_size"]),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta["mean"], meta["std"])])


def guide_features(guide, guide_input, images, normalize=True):
    """Penultimate features of decoded images ([-1, 1]) in fp32 whatever the guide's dtype; L2-normalised if asked."""
    x = guide_input(images)
    features = penultimate_features(guide, x.to(next(guide.parameters()).dtype)).float()
    return F.normalize(features, dim=1) if normalize else features


@torch.no_grad()
def extract_features(guide, dataset, device, batch_size=64):
    """L2-normalised penultimate features [N, D] and labels [N] of a dataset (its own transform)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    for images, targets in tqdm(loader, desc="features", leave=False, dynamic_ncols=True):
        feats.append(F.normalize(penultimate_features(guide, images.to(device)), dim=1).cpu())
        labels.append(targets)
    return torch.cat(feats), torch.cat(labels)
