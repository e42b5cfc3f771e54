"""Batched guided img2img on diffusers components (Stable Diffusion or the embedded prior).

Every random number of an item (the VAE latent sample, the img2img noise and the guidance
draws a, b) comes from that item's own generator, so a batch is just a stack of independent
items: outputs do not depend on which shard or batch an item lands in, up to float rounding.
"""
import logging
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from distdiff import DistDiffError
from distdiff.features import guide_features
from distdiff.guidance import energy, guide_step

logger = logging.getLogger(__name__)


@dataclass
class SampleConfig:
    """img2img settings; the defaults are the paper's."""
    num_steps: int = 50
    strength: float = 0.5
    cfg_scale: float = 7.5
    resolution: int | None = None  # None: the model's native size (512 for SD-1.4)

    @property
    def start(self):
        """Index of the first denoised step (diffusers' img2img rule)."""
        return self.num_steps - min(int(self.num_steps * self.strength), self.num_steps)

    def check_guidance(self, guidance_cfg):
        """Guidance must fall inside the denoised steps, with room for the look-ahead."""
        lookahead = guidance_cfg.lookahead_steps
        for index in guidance_cfg.indices(self.num_steps):
            if not self.start <= index <= self.num_steps - lookahead:
                raise DistDiffError(
                    f"guidance at step index {index} is outside the denoised steps "
                    f"[{self.start}, {self.num_steps - lookahead}] (strength {self.strength}, "
                    f"M={guidance_cfg.guidance_step}, P={lookahead}); lower --guidance_step or raise --strength")


@dataclass
class ItemDraws:
    """All random numbers one output image needs, drawn from its own generator."""
    latent_eps: torch.Tensor   # VAE posterior sample noise [C, h, w]
    noise: torch.Tensor        # img2img forward-diffusion noise [C, h, w]
    a: torch.Tensor            # transform guidance init, U(0, 1) per channel [R, C, 1, 1]
    b: torch.Tensor            # transform guidance init, N(0, 1) per channel [R, C, 1, 1]


def draw_item(generator, latent_shape, repeats):
    """Draw an item's random numbers in a fixed order (the same for every guidance mode, so
    guided and unguided images with the same seed share their noise)."""
    channels = latent_shape[0]
    return ItemDraws(latent_eps=torch.randn(latent_shape, generator=generator),
                     noise=torch.randn(latent_shape, generator=generator),
                     a=torch.rand((max(repeats, 1), channels, 1, 1), generator=generator),
                     b=torch.randn((max(repeats, 1), channels, 1, 1), generator=generator))


class GuidedSampler:
    """Holds the pipeline, guide, prototypes and per-class prompt embeddings for a run."""

    def __init__(self, pipe, guide, guide_input, prototypes, prompts, sample_cfg, guidance_cfg,
                 device):
        self.pipe, self.guide, self.guide_input = pipe, guide, guide_input
        self.device, self.sample_cfg, self.guidance_cfg = device, sample_cfg, guidance_cfg
        self.dtype = pipe.unet.dtype
        self.scheduler = pipe.scheduler
        self.scheduler.set_timesteps(sample_cfg.num_steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.start = sample_cfg.start
        self.guidance_at = set(guidance_cfg.indices(sample_cfg.num_steps))
        sample_cfg.check_guidance(guidance_cfg)
        self.resolution = sample_cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.scaling = pipe.vae.config.scaling_factor
        self.prompt_embeds = self._encode_prompts(prompts)  # [C, 2, L, E]: (uncond, cond)
        self.protos = {k: torch.as_tensor(prototypes[k]).to(device)
                       for k in ("class_protos", "group_protos", "group_mask")}

    # -- set-up --------------------------------------------------------------
    @torch.no_grad()
    def _encode_prompts(self, prompts):
        """Text embeddings once per class: [C, 2, L, E] with (unconditional, conditional)."""
        embeds = []
        for prompt in prompts:
            cond, uncond = self.pipe.encode_prompt(prompt, self.device, 1, True)
            embeds.append(torch.cat([uncond, cond]))
        return torch.stack(embeds)

    @torch.no_grad()
    def encode_sources(self, images):
        """VAE posterior (mean, std) of source PIL images, each [C, h, w], scaled latents."""
        pixels = self.pipe.image_processor.preprocess(images, height=self.resolution,
                                                      width=self.resolution)
        with record_function("vae_encode"):
            posterior = self.pipe.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return posterior.mean * self.scaling, posterior.std * self.scaling

    def latent_shape(self):
        """Latent [C, h, w] at the sampling resolution."""
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.pipe.vae.config.latent_channels, side, side)

    # -- model calls ---------------------------------------------------------
    def noise_pred(self, latents, t, embeds):
        """Classifier-free-guided epsilon; embeds [B, 2, L, E]."""
        doubled = torch.cat([latents, latents])
        doubled = self.scheduler.scale_model_input(doubled, t)
        context = torch.cat([embeds[:, 0], embeds[:, 1]])
        uncond, cond = self.pipe.unet(doubled, t, encoder_hidden_states=context).sample.chunk(2)
        return uncond + self.sample_cfg.cfg_scale * (cond - uncond)

    def decode(self, latents):
        """Latents -> images in [-1, 1]."""
        return self.pipe.vae.decode(latents / self.scaling).sample

    def lookahead_energy(self, latents, index, embeds, labels):
        """Mean energy over P look-ahead DDIM steps from `latents` at schedule index `index`."""
        cfg = self.guidance_cfg
        total = 0.0
        for p in range(cfg.lookahead_steps):
            t = self.timesteps[index + p]
            with record_function("lookahead_unet"):
                out = self.scheduler.step(self.noise_pred(latents, t, embeds), t, latents)
            with record_function("lookahead_vae_decode"):
                images = self.decode(out.pred_original_sample)
            with record_function("guide_forward"):
                features = guide_features(self.guide, self.guide_input, images, cfg.normalize_features)
            total = total + energy(features, self.protos["class_protos"][labels],
                                   self.protos["group_protos"][labels],
                                   self.protos["group_mask"][labels],
                                   cfg.lambda_class, cfg.lambda_group)
            latents = out.prev_sample
        return total / cfg.lookahead_steps

    # -- the loop ------------------------------------------------------------
    @torch.no_grad()
    def sample(self, posterior_mean, posterior_std, labels, draws):
        """Generate one batch. Inputs are per item: posterior [B, C, h, w], labels [B], draws.

        Returns (decoded images in [-1, 1] as a tensor [B, 3, H, W], stats dict of per-item lists).
        Everything but the guidance runs under inference_mode (no autograd bookkeeping at all);
        the latent is cloned out of it before each guidance step, because autograd cannot save
        inference tensors for the backward pass.
        """
        labels = labels.to(self.device)
        embeds = self.prompt_embeds[labels]
        stats = {"energy_before": [], "energy_after": [], "nonfinite": 0}
        with torch.inference_mode():
            eps = torch.stack([d.latent_eps for d in draws]).to(self.device, self.dtype)
            noise = torch.stack([d.noise for d in draws]).to(self.device, self.dtype)
            latents = posterior_mean + posterior_std * eps
            latents = self.scheduler.add_noise(latents, noise, self.timesteps[self.start:self.start + 1])
        for index in range(self.start, self.sample_cfg.num_steps):
            if index in self.guidance_at:
                latents = self._guide(latents.clone(), index, embeds, labels, draws, stats)
            t = self.timesteps[index]
            with torch.inference_mode(), record_function("denoise_unet"):
                latents = self.scheduler.step(self.noise_pred(latents, t, embeds), t, latents).prev_sample
        with torch.inference_mode(), record_function("final_decode"):
            return self.decode(latents), stats

    def to_pil(self, images):
        """Decoded [-1, 1] images -> PIL images (the pipeline's own postprocessing)."""
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    def _guide(self, latents, index, embeds, labels, draws, stats):
        """Apply guidance at `index`; record energies before/after when asked."""
        cfg = self.guidance_cfg
        application = sorted(self.guidance_at).index(index)
        a = torch.stack([d.a[application] for d in draws]).to(self.device, self.dtype)
        b = torch.stack([d.b[application] for d in draws]).to(self.device, self.dtype)

        def lookahead(z):
            return self.lookahead_energy(z, index, embeds, labels)

        if cfg.record_energy:
            with record_function("energy_measurement"):
                stats["energy_before"].append(lookahead(latents).float().cpu())
        with record_function("guidance_step"):
            new_latents, ok = guide_step(latents, lookahead, cfg, a, b)
        if cfg.record_energy:
            with record_function("energy_measurement"):
                stats["energy_after"].append(lookahead(new_latents).float().cpu())
        bad = int((~ok).sum())
        if bad:
            logger.warning("non-finite guidance energy for %d item(s) at step %d: kept unguided", bad, index)
            stats["nonfinite"] += bad
        return new_latents
