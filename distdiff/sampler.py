"""Batched guided img2img on diffusers components (Stable Diffusion or the embedded prior).

Every random number of an item (VAE latent sample, img2img noise, guidance draws a, b, and with
the matching options its prompt and offset noise) comes from its own generators (draw_items), so
a batch is a stack of independent items: outputs do not depend on the shard or batch an item
lands in, up to float rounding. Nothing here measures or records: `sample(..., observer=fn)`
calls fn after each guidance application (generation.EnergyRecorder), and the benchmark times the
model calls with module hooks and each application through `guidance_span` (distdiff.timing).
"""
import contextlib
import logging
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from distdiff.features import guide_features
from distdiff.shards import item_seed
from distdiff.guidance import direct_step, energy, transform_step, unit_prototypes
from distdiff.numerics import LossScale
from distdiff.settings import GUIDED
from distdiff.variants import offset_step

logger = logging.getLogger(__name__)
SOURCE_STREAM, CROP_STREAM, PROMPT_STREAM = -1, -2, -3  # a source's own streams: generator(source, stream)
OFFSET_NOISE = 0.1  # the authors' --offset_noise scale


@dataclass
class ItemDraws:
    """All random numbers one output image needs, drawn from its own generator."""
    latent_eps: torch.Tensor   # VAE posterior sample noise [C, h, w]
    noise: torch.Tensor        # img2img forward-diffusion noise [C, h, w]
    a: torch.Tensor            # transform guidance init, U(0, 1) per channel [R, C, 1, 1]
    b: torch.Tensor            # transform guidance init, N(0, 1) per channel [R, C, 1, 1]
    prompt: int = 0            # which of its class's prompts the item uses


def item_generator(seed, index, k):
    """A CPU generator for item (source index, copy k), or for a source's own stream (k < 0): CPU
    draws are identical on every machine."""
    return torch.Generator(device="cpu").manual_seed(item_seed(seed, index, k))


def draw_item(generator, latent_shape, repeats, num_prompts, offset_noise):
    """Draw an item's random numbers in a fixed order (the same for every guidance mode, so guided
    and unguided images with the same seed share their noise). Optional draws come last, so
    turning them on leaves the others unchanged."""
    channels = latent_shape[0]
    draws = ItemDraws(latent_eps=torch.randn(latent_shape, generator=generator),
                      noise=torch.randn(latent_shape, generator=generator),
                      a=torch.rand((max(repeats, 1), channels, 1, 1), generator=generator),
                      b=torch.randn((max(repeats, 1), channels, 1, 1), generator=generator))
    if num_prompts > 1:
        draws.prompt = int(torch.randint(num_prompts, (1,), generator=generator))
    if offset_noise:
        draws.noise = draws.noise + OFFSET_NOISE * torch.randn((channels, 1, 1), generator=generator)
    return draws


def draw_items(items, generator, latent_shape, repeats, num_prompts, cfg):
    """Every item's draws (items have index, k, label): draw_item from generator(index, k), then
    what the authors share per source, from that source's streams: its posterior sample
    (cfg.shared_posterior) and its prompt (cfg.shared_prompt). num_prompts(label): its class's count."""
    draws = []
    for it in items:
        count = num_prompts(it.label)
        d = draw_item(generator(it.index, it.k), latent_shape, repeats, count, cfg.offset_noise)
        if cfg.shared_posterior:
            d.latent_eps = torch.randn(latent_shape, generator=generator(it.index, SOURCE_STREAM))
        if cfg.shared_prompt and count > 1:
            d.prompt = int(torch.randint(count, (1,), generator=generator(it.index, PROMPT_STREAM)))
        draws.append(d)
    return draws


def frame(image, side, framing, generator=None):
    """A PIL image as a [3, side, side] tensor in [-1, 1]: shorter side resized to `side`, then a
    centre or (seeded) random crop; or the whole image squashed to side x side."""
    x = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
    if framing == "squash":
        x = TF.resize(x, [side, side], antialias=True)
    else:
        x = TF.resize(x, side, antialias=True)
        height, width = x.shape[-2:]
        if framing == "random":
            top = int(torch.randint(height - side + 1, (1,), generator=generator))
            left = int(torch.randint(width - side + 1, (1,), generator=generator))
        else:
            top, left = (height - side) // 2, (width - side) // 2
        x = TF.crop(x, top, left, side, side)
    return x * 2 - 1


class GuidedSampler:
    """The pipeline, guide, prototypes and prompt embeddings of a run; `prompts[c]` lists class c's
    prompts (one, or several with --language_enhance)."""

    def __init__(self, pipe, guide, guide_input, prototypes, prompts, sample_cfg, guidance_cfg, device):
        self.pipe, self.guide, self.guide_input = pipe, guide, guide_input
        self.device, self.sample_cfg, self.guidance_cfg = device, sample_cfg, guidance_cfg
        self.dtype = pipe.unet.dtype
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # its own: the pipe's stays as it is
        self.scheduler.set_timesteps(sample_cfg.num_steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.start = sample_cfg.start
        self.guidance_at = guidance_cfg.schedule(sample_cfg.num_steps, self.start)
        self.resolution = sample_cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.scaling = pipe.vae.config.scaling_factor
        self.prompt_embeds, self.prompt_index = self._encode_prompts(prompts)
        protos = {k: torch.as_tensor(prototypes[k]).to(device) for k in ("class_protos", "group_protos", "group_mask")}
        self.protos = unit_prototypes(protos) if guidance_cfg.renormalize_prototypes else protos
        self.loss_scale = LossScale()  # half precision: each pass starts where the last one's scale worked
        self.guidance_span = contextlib.nullcontext  # entered around each guidance application (distdiff.timing)

    # -- set-up --------------------------------------------------------------
    @torch.no_grad()
    def _encode_prompts(self, prompts):
        """Text embeddings [N, 2, L, E] (unconditional, conditional) of the distinct prompts; per class its rows."""
        distinct = list(dict.fromkeys(p for class_prompts in prompts for p in class_prompts))
        embeds = []
        for prompt in distinct:
            cond, uncond = self.pipe.encode_prompt(prompt, self.device, 1, True)  # negative prompt ""
            embeds.append(torch.cat([uncond, cond]))
        # The text encoder may run in another dtype than the UNet (load_pipeline's encode_dtype).
        return torch.stack(embeds).to(self.dtype), [[distinct.index(p) for p in cp] for cp in prompts]

    def prompts_per_class(self, label):
        """How many prompts class `label` has (the item draws one of them)."""
        return len(self.prompt_index[label])

    @torch.no_grad()
    def encode_sources(self, images, generators=None):
        """Scaled VAE posterior (mean, std) [C, h, w] of source PIL images; `generators` (one per
        image) place the crop of framing="random"."""
        generators = generators or [None] * len(images)
        pixels = torch.stack([frame(img, self.resolution, self.sample_cfg.framing, gen)
                              for img, gen in zip(images, generators)])
        encoder_dtype = next(self.pipe.vae.encoder.parameters()).dtype  # the UNet's, or encode_dtype
        posterior = self.pipe.vae.encode(pixels.to(self.device, encoder_dtype)).latent_dist
        return (posterior.mean * self.scaling).to(self.dtype), (posterior.std * self.scaling).to(self.dtype)

    def latent_shape(self):
        """Latent [C, h, w] at the sampling resolution."""
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.pipe.vae.config.latent_channels, side, side)

    # -- model calls ---------------------------------------------------------
    def noise_pred(self, latents, t, embeds):
        """Classifier-free-guided epsilon; embeds [B, 2, L, E]."""
        doubled = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        context = torch.cat([embeds[:, 0], embeds[:, 1]])
        uncond, cond = self.pipe.unet(doubled, t, encoder_hidden_states=context).sample.chunk(2)
        return uncond + self.sample_cfg.cfg_scale * (cond - uncond)

    def decode(self, latents):
        """Latents -> images in [-1, 1]."""
        return self.pipe.vae.decode(latents / self.scaling).sample

    def step(self, latents, index, embeds):
        """One DDIM step at schedule index `index` (the scheduler's output: prev_sample, x0)."""
        t = self.timesteps[index]
        return self.scheduler.step(self.noise_pred(latents, t, embeds), t, latents)

    def image_energy(self, x0, labels):
        """Energy [B] of predicted clean latents: decode, map to the guide's input, score."""
        cfg = self.guidance_cfg
        if cfg.energy == "classifier":  # the guide's cross-entropy for the item's class, in fp32
            x = self.guide_input(self.decode(x0)).to(next(self.guide.parameters()).dtype)
            return torch.nn.functional.cross_entropy(self.guide(x).float(), labels, reduction="none")
        features = guide_features(self.guide, self.guide_input, self.decode(x0), cfg.normalize_features)
        return energy(features, self.protos["class_protos"][labels], self.protos["group_protos"][labels],
                      self.protos["group_mask"][labels], cfg.lambda_class, cfg.lambda_group)

    def lookahead_energy(self, latents, index, embeds, labels):
        """Mean energy over P look-ahead DDIM steps from `latents` at schedule index `index`."""
        total = 0.0
        for p in range(self.guidance_cfg.lookahead_steps):
            out = self.step(latents, index + p, embeds)
            total = total + self.image_energy(out.pred_original_sample, labels)
            latents = out.prev_sample
        return total / self.guidance_cfg.lookahead_steps

    # -- the loop ------------------------------------------------------------
    @torch.no_grad()
    def sample(self, posterior_mean, posterior_std, labels, draws, observer=None):
        """Generate one batch from per-item inputs: posterior [B, C, h, w], labels [B], draws. Returns
        (decoded images [B, 3, H, W] in [-1, 1], outcome [B]: settings.GUIDED unless an application
        lost guidance to a non-finite or all-zero gradient). `observer(index, latents, guided,
        unguided, embeds, labels)`, called after each guidance application (unguided: the same latent
        for transform, the plain DDIM step for direct), must not change them. All but the guidance
        runs under inference_mode; the latent is cloned out of it first (autograd cannot save
        inference tensors for the backward pass)."""
        labels = labels.to(self.device)
        rows = torch.tensor([self.prompt_index[int(y)][d.prompt] for y, d in zip(labels, draws)], device=self.device)
        embeds = self.prompt_embeds[rows]
        status = torch.full((len(draws),), GUIDED, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            eps = torch.stack([d.latent_eps for d in draws]).to(self.device, self.dtype)
            noise = torch.stack([d.noise for d in draws]).to(self.device, self.dtype)
            latents = posterior_mean + posterior_std * eps
            latents = self.scheduler.add_noise(latents, noise, self.timesteps[self.start:self.start + 1])
        direct = self.guidance_cfg.mode == "direct"
        for index in range(self.start, self.sample_cfg.num_steps):
            if index in self.guidance_at:
                start = latents.clone()
                with self.guidance_span():
                    if direct:  # the guided step replaces the ordinary one
                        latents, unguided, outcome = self._direct(start, index, embeds, labels)
                    else:
                        latents, outcome = self._transform(start, index, embeds, labels, draws)
                        unguided = start
                status = torch.maximum(status, outcome)  # keep each item's worst outcome
                if observer is not None:
                    observer(index, start, latents, unguided, embeds, labels)
                if direct:
                    continue
            with torch.inference_mode():
                latents = self.step(latents, index, embeds).prev_sample
        with torch.inference_mode():
            return self.decode(latents), status

    def to_pil(self, images):
        """Decoded [-1, 1] images -> PIL images (the pipeline's own postprocessing)."""
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    def _transform(self, latents, index, embeds, labels, draws):
        """Transform guidance at `index`: (guided latent at the same index, outcome [B])."""
        cfg = self.guidance_cfg
        application = self.guidance_at.index(index)
        a = torch.stack([d.a[application] for d in draws]).to(self.device)  # fp32: the guidance's own variables
        b = torch.stack([d.b[application] for d in draws]).to(self.device)
        if cfg.transform_start == "identity":  # the gradient alone (the draws stay drawn: paired noise)
            a, b = torch.zeros_like(a), torch.zeros_like(b)

        def lookahead(z):
            return self.lookahead_energy(z, index, embeds, labels)
        if cfg.transform_point == "landed":  # variants V1/V2 of docs/guidance_variants.md
            return offset_step(latents, lookahead, a, b, cfg.radius, cfg.guidance_iters, cfg.offset_step,
                               self.loss_scale)
        return transform_step(latents, lookahead, a, b, cfg.step_size, cfg.radius, self.loss_scale)

    def _direct(self, latents, index, embeds, labels):
        """One direct-guidance step at `index`: (guided latent of index + 1, unguided one, outcome)."""
        def step_energy(z):
            out = self.step(z, index, embeds)
            return out.prev_sample, self.image_energy(out.pred_original_sample, labels)
        return direct_step(latents, step_energy, self.guidance_cfg.step_size, self.loss_scale)
