"""Quality of a diffusion prior: an independent evaluator classifier and the measurements.

Protocol (never touches the test split):
  * an evaluator (resnet_small) is trained on the `prior` split and cached; its accuracy on real
    `val` images is the sanity reference;
  * (a) text-to-image: `per_class` samples for every class prompt, scored by the evaluator
    against the prompt's class;
  * (b) img2img at `strength` from every `train` image with its class prompt, scored against
    the source class;
  * (c) VAE reconstruction MSE on `val` (pixels in [0, 1]);
  * img2img throughput (images/s) at batch 1 and 16.
studies/eval_prior.py runs it on a folder; scripts/train_prior.py at the end of training.
"""
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torchvision.transforms import v2
from tqdm.auto import tqdm

from distdiff import DistDiffError
from distdiff.datasets import load_split
from distdiff.engine import train_one_epoch
from distdiff.fileio import atomic_torch_save
from distdiff.pipeline import load_pipeline
from models.classifiers import create_classifier

logger = logging.getLogger(__name__)
TARGETS = {"t2i_accuracy": 95.0, "img2img_accuracy": 95.0}
EVAL_SIZE = 32  # the evaluator's input side; generated images are resized to it


@dataclass(frozen=True)
class EvalProtocol:
    """The measurement settings (stored in quality.json)."""
    per_class: int = 20          # text-to-image samples per class prompt
    per_image: int = 2           # img2img outputs per train image
    num_steps: int = 50          # DDIM inference steps
    guidance: float = 7.5        # classifier-free guidance scale
    strength: float = 0.5        # img2img strength
    seed: int = 0
    batch_size: int = 100        # prompts per pipeline call
    evaluator_epochs: int = 12   # epochs of the evaluator classifier on the prior split


# ---------------------------------------------------------------------------
# Data helpers (the prior training uses them too)
# ---------------------------------------------------------------------------

def load_images(spec, split, image_size):
    """One split as a float tensor [N, 3, S, S] in [0, 1], its labels and class folder names."""
    transform = v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True),
                            v2.ToDtype(torch.float32, scale=True)])
    folder = load_split(spec, split, transform)
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    return images, torch.tensor(folder.targets), list(folder.classes)


def augment(images, generator, max_shift, max_degrees):
    """Random small rotation and shift per image (black fill), as one batched affine warp."""
    n, size = images.shape[0], images.shape[-1]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/size.
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2.0 * max_shift / size)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------
# The independent evaluator
# ---------------------------------------------------------------------------

def normalize(images):
    """[0, 1] images at any size -> the evaluator's input (EVAL_SIZE px, centred values)."""
    if images.shape[-1] != EVAL_SIZE or images.shape[-2] != EVAL_SIZE:
        images = F.interpolate(images, size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear",
                               antialias=True, align_corners=False)
    return (images - 0.5) / 0.5


class AugmentedBatches:
    """One epoch of evaluator batches: a fresh order and fresh small warps per epoch, both drawn
    from `generator` (a sized iterable, as engine.train_one_epoch takes)."""

    def __init__(self, images, labels, batch_size, generator):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield normalize(augment(self.images[idx], self.generator, 2, 10)), self.labels[idx]


def train_evaluator(images, labels, num_classes, epochs, batch_size, seed, device):
    """Train resnet_small on the prior split with light augmentation (AdamW, one-cycle lr per
    step), through the project's one training loop (engine.train_one_epoch)."""
    torch.manual_seed(seed)
    batches = AugmentedBatches(images, labels, batch_size, torch.Generator().manual_seed(seed))
    model = create_classifier("resnet_small", num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(batches))
    for _ in tqdm(range(epochs), desc="evaluator", dynamic_ncols=True):
        train_one_epoch(model, batches, opt, device, desc="evaluator batches", scheduler=sched)
    return model.eval()


def get_evaluator(spec, cache, epochs, seed, device, batch_size=64):
    """The cached evaluator if it was trained with the same settings, else train and cache one."""
    images, labels, classes = load_images(spec, "prior", EVAL_SIZE)
    meta = {"dataset": spec.name, "classes": classes, "epochs": epochs, "seed": seed,
            "n_prior": len(images)}
    cache = Path(cache)
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("meta") == meta:
            model = create_classifier("resnet_small", len(classes))
            model.load_state_dict(saved["state_dict"])
            logger.info("evaluator loaded from %s", cache)
            return model.to(device).eval(), classes
        logger.info("evaluator cache %s has other settings: retraining", cache)
    start = time.time()
    model = train_evaluator(images, labels, len(classes), epochs, batch_size, seed, device)
    atomic_torch_save({"meta": meta, "state_dict": model.state_dict()}, cache)
    logger.info("evaluator trained on %d prior images in %.0f s -> %s", len(images),
                time.time() - start, cache)
    return model, classes


@torch.no_grad()
def predict(model, images, batch_size=256):
    """Evaluator class predictions for [0, 1] images."""
    device = next(model.parameters()).device
    out = [model(normalize(images[i:i + batch_size].float()).to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def accuracy(pred, labels, classes):
    """Overall and per-class accuracy in percent."""
    per_class = {c: round(100.0 * (pred[labels == k] == k).float().mean().item(), 2)
                 for k, c in enumerate(classes) if (labels == k).any()}
    return round(100.0 * (pred == labels).float().mean().item(), 2), per_class


# ---------------------------------------------------------------------------
# Pipelines and the measurements
# ---------------------------------------------------------------------------

def load_pipelines(model, device):
    """(text-to-image, img2img) SD pipelines sharing one set of components, through the
    expander's loader (its DDIM is the schedule the prior was trained and saved with)."""
    from diffusers import StableDiffusionPipeline

    img2img = load_pipeline(model, device)
    text2img = StableDiffusionPipeline(**img2img.components)
    text2img.set_progress_bar_config(disable=True)  # our own bars count batches instead
    return text2img, img2img


def native_size(pipe):
    """The image side the pipeline generates by default (UNet sample size x VAE scale)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def text_to_image(pipe, prompts, per_class, steps, guidance, seed, batch_size):
    """per_class samples for every prompt: images [N, 3, H, W] in [0, 1] and their labels."""
    labels = torch.arange(len(prompts)).repeat_interleave(per_class)
    images = []
    for start in tqdm(range(0, len(labels), batch_size), desc="text-to-image", dynamic_ncols=True):
        chunk = labels[start:start + batch_size]
        gen = torch.Generator().manual_seed(seed + start)  # per batch: independent of earlier calls
        out = pipe([prompts[k] for k in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gen, output_type="pt").images
        images.append(out.float().cpu())
    return torch.cat(images), labels


def image_to_image(pipe, sources, labels, prompts, strength, steps, guidance, seed, batch_size):
    """img2img from each source image with its class prompt: outputs [N, 3, H, W] in [0, 1]."""
    size = native_size(pipe)
    sources = F.interpolate(sources, size=(size, size), mode="bilinear", align_corners=False)
    images = []
    for start in tqdm(range(0, len(sources), batch_size), desc="img2img", dynamic_ncols=True):
        gen = torch.Generator().manual_seed(seed + start)
        out = pipe([prompts[k] for k in labels[start:start + batch_size]],
                   image=sources[start:start + batch_size], strength=strength,
                   num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                   output_type="pt").images
        images.append(out.float().cpu())
    return torch.cat(images)


@torch.no_grad()
def vae_recon_mse(vae, images, batch_size=100):
    """Mean squared error of encode(mode) -> decode on [0, 1] pixels."""
    device, dtype = vae.device, vae.dtype
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, dtype) * 2 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        total += F.mse_loss((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2, reduction="sum").item()
    return total / images.numel()


def img2img_throughput(pipe, source, prompt, batch_size, strength, steps, guidance, repeats):
    """Images per second of img2img at one batch size (after one warm-up call)."""
    size = native_size(pipe)
    image = F.interpolate(source[None], size=(size, size), mode="bilinear", align_corners=False)
    kwargs = dict(prompt=[prompt] * batch_size, image=image.expand(batch_size, -1, -1, -1),
                  strength=strength, guidance_scale=guidance, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    pipe(num_inference_steps=4, **kwargs)  # warm-up: first calls pay one-off allocation costs
    start = time.perf_counter()
    for _ in range(repeats):
        pipe(num_inference_steps=steps, **kwargs)
    return round(batch_size * repeats / (time.perf_counter() - start), 2)


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------

def evaluate_prior(model_dir, spec, evaluator_cache, device, protocol=EvalProtocol(), figure_path=None):
    """Run the whole protocol on a saved pipeline folder; returns the quality dict."""
    start = time.time()
    cfg = asdict(protocol)
    set_seed(cfg["seed"])
    text2img, img2img = load_pipelines(str(model_dir), device)
    evaluator, classes = get_evaluator(spec, evaluator_cache, cfg["evaluator_epochs"],
                                       cfg["seed"], device)
    prompts = spec.class_prompts(classes)
    val_images, val_labels, _ = load_images(spec, spec.val_split, EVAL_SIZE)
    eval_val_acc, _ = accuracy(predict(evaluator, val_images), val_labels, classes)

    samples, sample_labels = text_to_image(text2img, prompts, cfg["per_class"], cfg["num_steps"],
                                           cfg["guidance"], cfg["seed"], cfg["batch_size"])
    t2i_acc, t2i_per_class = accuracy(predict(evaluator, samples), sample_labels, classes)

    size = native_size(img2img)
    sources, source_labels, train_classes = load_images(spec, spec.train_split, size)
    if train_classes != classes:
        raise DistDiffError(f"{spec.name}: train and prior splits have different class folders")
    sources = sources.repeat_interleave(cfg["per_image"], 0)
    source_labels = source_labels.repeat_interleave(cfg["per_image"], 0)
    edited = image_to_image(img2img, sources, source_labels, prompts, cfg["strength"],
                            cfg["num_steps"], cfg["guidance"], cfg["seed"], cfg["batch_size"])
    i2i_acc, i2i_per_class = accuracy(predict(evaluator, edited), source_labels, classes)

    recon_images, _, _ = load_images(spec, spec.val_split, size)
    mse = vae_recon_mse(img2img.vae, recon_images)
    speed = {f"batch{b}": img2img_throughput(img2img, sources[0], prompts[int(source_labels[0])],
                                             b, cfg["strength"], cfg["num_steps"],
                                             cfg["guidance"], repeats=3 if b == 1 else 1)
             for b in (1, 16)}
    if figure_path:
        real, real_labels, _ = load_images(spec, "prior", size)
        step = cfg["per_image"]  # one output per source image, next to its source
        save_figure(figure_path, classes, [
            ("real (prior split)", real, real_labels),
            ("text-to-image", samples, sample_labels),
            ("img2img source (train)", sources[::step], source_labels[::step]),
            (f"img2img (strength {cfg['strength']})", edited[::step], source_labels[::step])])
    quality = {
        "dataset": spec.name, "protocol": dict(cfg), "targets": TARGETS,
        "t2i_accuracy": t2i_acc, "t2i_per_class": t2i_per_class, "t2i_samples": len(samples),
        "img2img_accuracy": i2i_acc, "img2img_per_class": i2i_per_class,
        "img2img_samples": len(edited), "evaluator_val_accuracy": eval_val_acc,
        "vae_recon_mse_val": round(mse, 6), "img2img_images_per_s": speed,
        "eval_seconds": round(time.time() - start, 1),
    }
    quality["meets_targets"] = all(quality[k] >= v for k, v in TARGETS.items())
    return quality


def summary_lines(quality):
    """Human-readable lines for the console."""
    speed = quality["img2img_images_per_s"]
    return [f"text-to-image accuracy  {quality['t2i_accuracy']:6.2f} %  "
            f"({quality['t2i_samples']} samples; target {TARGETS['t2i_accuracy']:.0f} %)",
            f"img2img accuracy        {quality['img2img_accuracy']:6.2f} %  "
            f"({quality['img2img_samples']} samples; target {TARGETS['img2img_accuracy']:.0f} %)",
            f"evaluator val accuracy  {quality['evaluator_val_accuracy']:6.2f} %  (real images)",
            f"VAE recon MSE (val)     {quality['vae_recon_mse_val']:.5f}",
            f"img2img images/s        batch 1: {speed['batch1']}, batch 16: {speed['batch16']}"]


def save_figure(path, classes, groups, per_group=3, side=32):
    """One row per class, one column group per (title, images, labels) entry."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell, gap = side + 2, side // 2  # 2 px white between tiles, a wider gap between groups
    group_width = per_group * cell
    width = len(groups) * group_width + (len(groups) - 1) * gap
    canvas = torch.ones(3, len(classes) * cell, width)
    for row in range(len(classes)):
        for g, (_, images, labels) in enumerate(groups):
            for k, img in enumerate(images[labels == row][:per_group]):
                tile = F.interpolate(img[None].float(), size=(side, side), mode="bilinear")[0]
                x = g * (group_width + gap) + k * cell
                canvas[:, row * cell:row * cell + side, x:x + side] = tile
    fig, ax = plt.subplots(figsize=(width / 36, len(classes) * cell / 36 + 0.6), dpi=80)
    ax.imshow(canvas.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
    for g, (title, _, _) in enumerate(groups):
        ax.text(g * (group_width + gap) + group_width / 2, -4, title, ha="center", va="bottom",
                fontsize=8)
    ax.set_yticks([r * cell + side / 2 for r in range(len(classes))], labels=classes, fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    logger.info("figure -> %s", path)


def default_evaluator_cache(model, dataset, checkpoint_root):
    """<model>.work/evaluator.pt for a local folder, a per-dataset file otherwise."""
    path = Path(model)
    if path.is_dir():
        return path.parent / f"{path.name}.work" / "evaluator.pt"
    return Path(checkpoint_root) / "prior" / f"{dataset}.work" / "evaluator.pt"
