"""How close an image set lies to a reference set, in a classifier's penultimate feature space.

* FID: Frechet distance between Gaussian fits of the two feature sets, computed by
  torchmetrics' FrechetInceptionDistance with the classifier as its feature extractor. The
  features are the raw pre-logits vectors (FID's usual choice, like Inception's pool3 features).
* k-NN manifold precision and recall (Kynkaanniemi et al., 2019) and density and coverage
  (Naeem et al., 2020), k = 3, in the same raw feature space.
* Mean distance to the DistDiff prototypes, in the L2-normalised space the guidance energy uses:
  to the image's class prototype and to the group prototype the energy picks (most cosine-similar).
"""
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distdiff import DistDiffError
from distdiff import datasets as ds
from distdiff.engine import load_classifier
from distdiff.guidance import energy
from distdiff.prototype_store import fingerprint
from models.classifiers import logits_from_penultimate, penultimate_features

logger = logging.getLogger(__name__)


class PenultimateFeatures(torch.nn.Module):
    """A classifier's pre-logits features [N, D] as a torchmetrics feature extractor.

    torchmetrics reads `num_features` instead of probing the module with a 299 px dummy input,
    which a 32 px classifier would not be built for; `example` is one input batch to size it.
    """

    def __init__(self, model, example):
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            self.num_features = penultimate_features(model, example).shape[1]

    def forward(self, images):
        return penultimate_features(self.model, images)


# Written here: none of the pinned libraries computes these (torchmetrics has FID, KID and IS).
def kth_neighbour_radii(features, k, chunk=1024):
    """Distance from every row to its k-th nearest other row (the row itself is the 0-th)."""
    if len(features) <= k:
        raise DistDiffError(f"k-NN metrics with k={k} need more than {k} images per set, got {len(features)}")
    radii = [torch.cdist(features[i:i + chunk], features).kthvalue(k + 1, dim=1).values
             for i in range(0, len(features), chunk)]
    return torch.cat(radii)


def manifold_metrics(real, fake, k=3, real_radii=None, chunk=1024):
    """precision, recall (Kynkaanniemi et al.), density, coverage (Naeem et al.) of `fake` vs `real`.

    A k-NN ball around each sample (radius: distance to its k-th neighbour in its own set)
    approximates each manifold. precision: fraction of fake samples inside some real ball;
    recall: fraction of real samples inside some fake ball; density: real balls containing each
    fake sample, averaged and divided by k; coverage: fraction of real balls holding a fake sample.
    Balls are closed (<=), so identical sets score 1 on all four.
    """
    real, fake = real.double(), fake.double()  # float64: self-distances of shared points stay 0
    real_radii = kth_neighbour_radii(real, k, chunk) if real_radii is None else real_radii.double()
    fake_radii = kth_neighbour_radii(fake, k, chunk)
    balls_per_fake = torch.zeros(len(fake), dtype=torch.float64)
    for i in range(0, len(fake), chunk):
        balls_per_fake[i:i + chunk] = (torch.cdist(fake[i:i + chunk], real) <= real_radii[None]).sum(1)
    recalled, covered = torch.zeros(len(real), dtype=torch.bool), torch.zeros(len(real), dtype=torch.bool)
    for i in range(0, len(real), chunk):
        dist = torch.cdist(real[i:i + chunk], fake)
        recalled[i:i + chunk] = (dist <= fake_radii[None]).any(1)
        covered[i:i + chunk] = dist.min(1).values <= real_radii[i:i + chunk]
    return {"precision": (balls_per_fake > 0).double().mean().item(), "recall": recalled.double().mean().item(),
            "density": (balls_per_fake.sum() / (k * len(fake))).item(), "coverage": covered.double().mean().item()}


def prototype_distances(unit_features, class_indices, protos):
    """Mean distance of L2-normalised features to their class prototype and to the group prototype
    the guidance energy would pick (highest cosine similarity); `class_indices` index the protos."""
    class_protos = torch.as_tensor(protos["class_protos"], dtype=torch.float32)[class_indices]
    group_protos = torch.as_tensor(protos["group_protos"], dtype=torch.float32)[class_indices]
    group_mask = torch.as_tensor(protos["group_mask"])[class_indices]
    unit_features = unit_features.float()
    # energy() with one lambda at 0 is exactly one of its two terms.
    to_class = energy(unit_features, class_protos, group_protos, group_mask, 1.0, 0.0)
    to_group = energy(unit_features, class_protos, group_protos, group_mask, 0.0, 1.0)
    return {"class_proto_dist": to_class.mean().item(), "group_proto_dist": to_group.mean().item()}


def prototypes_match(protos, guide_ckpt, train_root, train_files, cluster, num_groups):
    """True when prototypes.npz was built from this guide checkpoint, training split, method and K."""
    files = [str(Path(p).relative_to(train_root)) for p in train_files]
    return str(protos["fingerprint"]) == fingerprint(guide_ckpt, files, cluster, num_groups)


def load_eval_classifier(ckpt, num_classes):
    """(classifier on the CPU, its test-time transform, its class names) from a checkpoint: the
    model whose feature space and predictions the metrics use."""
    model, meta = load_classifier(ckpt, "cpu", num_classes=num_classes)
    transform = ds.test_transform(meta["image_size"], meta["resize_size"], meta["mean"], meta["std"])
    return model, transform, list(meta["classes"])


class FeatureSpaceEvaluator:
    """Metrics of image folders against one reference folder in a classifier's feature space.

    The reference features and the real-side FID statistics are computed once; every
    `evaluate(folder)` then runs the classifier once over the folder's images.
    """

    def __init__(self, model, transform, classes, reference_dir, k=3, batch_size=64):
        from torchmetrics.image.fid import FrechetInceptionDistance  # only this module needs torchmetrics
        self.transform, self.classes, self.k, self.batch_size = transform, list(classes), k, batch_size
        example = ds.image_folder(reference_dir, transform, verify=False)[0][0][None]
        self.extractor = PenultimateFeatures(model, example)
        # reset_real_features=False: reset() between folders keeps the reference statistics.
        self.fid = FrechetInceptionDistance(feature=self.extractor, reset_real_features=False)
        self.real_features, _ = self._features(reference_dir, real=True)
        self.real_radii = kth_neighbour_radii(self.real_features.double(), k)

    @torch.no_grad()
    def _features(self, folder_dir, real):
        """(raw features [N, D], guide class indices [N]) of a folder, fed to the FID metric on the way."""
        folder = ds.image_folder(folder_dir, self.transform, verify=False)
        unknown = sorted(set(folder.classes) - set(self.classes))
        if unknown:
            raise DistDiffError(f"{folder_dir}: class folders {unknown[:5]} are unknown to the guide classifier")
        to_guide = torch.tensor([self.classes.index(name) for name in folder.classes])
        features, labels = [], []
        # A forward hook collects the features the metric computes, so each image passes once.
        hook = self.extractor.register_forward_hook(lambda _m, _i, out: features.append(out.detach().cpu()))
        try:
            for images, targets in DataLoader(folder, batch_size=self.batch_size, shuffle=False):
                self.fid.update(images, real=real)
                labels.append(to_guide[targets])
        finally:
            hook.remove()
        return torch.cat(features), torch.cat(labels)

    def evaluate(self, folder_dir, protos=None):
        """FID, precision/recall/density/coverage, guide accuracy and (given prototypes) prototype
        distances."""
        self.fid.reset()
        features, labels = self._features(folder_dir, real=False)
        if len(features) < 2:
            raise DistDiffError(f"{folder_dir} has {len(features)} image(s); FID needs at least 2")
        row = {"n_images": len(features), "fid": float(self.fid.compute())}
        with torch.no_grad():  # the guide's accuracy on the images, from the same forward pass
            logits = logits_from_penultimate(self.extractor.model, features)
        row["guide_acc"] = float((logits.argmax(1) == labels).float().mean())
        row.update(manifold_metrics(self.real_features, features, self.k, self.real_radii))
        row.update(class_proto_dist=None, group_proto_dist=None)  # same keys in every row
        if protos is not None:
            names = list(protos["class_names"])
            missing = sorted({self.classes[i] for i in labels.tolist()} - set(names))
            if missing:
                raise DistDiffError(f"prototypes have no class(es) {missing[:5]} found in {folder_dir}")
            index = torch.tensor([names.index(self.classes[i]) for i in labels.tolist()])
            row.update(prototype_distances(F.normalize(features, dim=1), index, protos))
        return row


class InceptionFID:
    """FID in Inception-v3 pool3 space (the usual FID) against one reference folder. Needs
    torch-fidelity and its weights, downloaded on first use: the online/GPU path, so building it
    on an offline machine is a one-line error, raised before any other work."""

    def __init__(self, reference_dir, batch_size=32):
        from torchvision.transforms import v2
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            self.metric = FrechetInceptionDistance(feature=2048, reset_real_features=False)
        except (ModuleNotFoundError, OSError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise DistDiffError(f"--inception needs torch-fidelity and its Inception-v3 weights, downloaded on "
                                f"first use (pip install torch-fidelity on a machine with internet; {reason})") from None
        # uint8 images at Inception's 299 px; the metric converts and normalises them itself.
        self.transform = v2.Compose([v2.ToImage(), v2.Resize((299, 299)), v2.ToDtype(torch.uint8)])
        self.batch_size = batch_size
        self._update(reference_dir, real=True)

    def _update(self, folder_dir, real):
        folder = ds.image_folder(folder_dir, self.transform, verify=False)
        for images, _ in DataLoader(folder, batch_size=self.batch_size, shuffle=False):
            self.metric.update(images, real=real)

    def score(self, folder_dir):
        """Inception FID of one folder against the reference."""
        self.metric.reset()  # keeps the reference statistics
        self._update(folder_dir, real=False)
        return float(self.metric.compute())
