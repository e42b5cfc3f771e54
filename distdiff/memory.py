"""How many images fit on a GPU: the per-image memory model behind `--batch_size auto`.

The model is counted, not guessed: meta-device copies of the pipeline's UNet and VAE (built from
their configs, so any SD-shaped model is covered) and of the guide run the guidance look-ahead
with autograd on, and a saved-tensors hook adds up what autograd keeps for the backward pass
(each storage once, in the pipeline's dtype). Nothing is allocated or computed.

* Plain: everything saved, less the attention probability matrices that only the math attention
  kernel keeps (PyTorch's fused kernels keep the inputs and a log-sum-exp), plus the largest
  checkpoint unit's activations as the working set of the forward.
* Gradient checkpointing (diffusers: each UNet ResNet and transformer block, and each block of
  the VAE decoder, recomputed in the backward): what is saved outside those units, plus the
  inputs each unit keeps for its recomputation, plus twice the largest unit (its recomputed
  activations and their gradients, live together during its backward).
* Unguided sampling (no autograd): the largest unit's activations, a working-set bound.

`scripts/gpu_check.sh` compares these predictions with the measured peak on a real GPU.
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.classifiers import penultimate_features

GIB = 2 ** 30
RESERVE_BYTES = GIB  # CUDA context, cuBLAS/cuDNN workspaces: not in torch's free-memory figure's reach
FRAGMENTATION = 0.9  # use 90 % of the rest: the caching allocator cannot pack blocks perfectly
MAX_AUTO_BATCH = 64  # beyond this a GPU is saturated and a shard's tail batch only idles it


@dataclass(frozen=True)
class ImageMemory:
    """Predicted bytes per image."""
    plain: int          # guided, all activations kept
    checkpointed: int   # guided, with gradient checkpointing
    unguided: int       # no guidance (inference only)


def _tensor_bytes(tensor):
    return tensor.numel() * tensor.element_size()


class _SavedCounter:
    """Adds up the storages autograd saves, split by the checkpoint unit active when saved."""

    def __init__(self, units, min_square):
        self.units, self.min_square = units, min_square
        self.seen, self.inputs_seen, self.keep, self.stack = set(), set(), [], []
        self.outside, self.attention, self.unit_inputs = 0, 0, 0
        self.per_call = []  # saved bytes (less attention) of each unit call

    def pack(self, tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.seen:
            self.seen.add(id(base))
            self.keep.append(base)  # keeps ids unique while the pass runs
            size = _tensor_bytes(base)
            if base.dim() >= 3 and base.shape[-1] == base.shape[-2] >= self.min_square:
                self.attention += size
            elif self.stack:
                self.per_call[self.stack[-1]] += size
            else:
                self.outside += size
        return tensor

    def hooks(self):
        """Forward hooks on every unit: track the active unit and count its inputs."""
        handles = []
        for unit in self.units:
            def pre(module, args, kwargs):
                inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
                for tensor in inputs:
                    if id(tensor) not in self.inputs_seen:
                        self.inputs_seen.add(id(tensor))
                        self.keep.append(tensor)
                        self.unit_inputs += _tensor_bytes(tensor)
                self.per_call.append(0)
                self.stack.append(len(self.per_call) - 1)

            def post(module, args, output):
                self.stack.pop()
            handles += [unit.register_forward_pre_hook(pre, with_kwargs=True), unit.register_forward_hook(post)]
        return handles


def checkpoint_units(unet, vae):
    """The modules diffusers checkpoints: UNet ResNet and transformer blocks, VAE decoder blocks."""
    names = ("ResnetBlock2D", "BasicTransformerBlock")
    decoder = vae.decoder
    return ([m for m in unet.modules() if type(m).__name__ in names]
            + [decoder.mid_block, *decoder.up_blocks])


def _meta_models(pipe, guide, dtype):
    """Meta-device UNet and VAE from the pipeline's configs, and a meta copy of the guide."""
    from diffusers.utils import logging as diffusers_logging

    unet_cls, vae_cls = type(pipe.unet), type(pipe.vae)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) on a fresh model warns; these are never run
    try:
        with torch.device("meta"):
            unet = unet_cls.from_config(pipe.unet.config).to(dtype)
            vae = vae_cls.from_config(pipe.vae.config).to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    meta_guide = copy.deepcopy(guide).to("meta")
    for module in (unet, vae, meta_guide):
        module.requires_grad_(False).eval()
    return unet, vae, meta_guide


def count_lookahead(unet, vae, guide, latent_side, tokens, width, guide_side, lookahead_steps,
                    dtype=torch.float16, attention_min_side=1024):
    """What one guided image keeps for the backward, on meta modules: a dict of bytes
    (outside units, unit inputs, per unit call, attention matrices)."""
    latents = torch.empty(1, unet.config.in_channels, latent_side, latent_side, device="meta", dtype=dtype)
    context = torch.empty(2, tokens, width, device="meta", dtype=dtype)
    t = torch.tensor([500], device="meta")
    counter = _SavedCounter(checkpoint_units(unet, vae), attention_min_side)
    handles = counter.hooks()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda x: x):
            z = latents.requires_grad_(True)
            for _ in range(lookahead_steps):
                eps = unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample
                x0 = z - eps[:1]  # DDIM's x0 is an affine map of eps: the same saved tensors
                images = vae.decode(x0).sample
                guide_in = F.interpolate(images.float(), size=guide_side, mode="bilinear", antialias=True)
                guide_in = guide_in.to(next(guide.parameters()).dtype)
                features = penultimate_features(guide, guide_in)
                features.norm(dim=1).sum()  # the energy's reduction saves nothing of size
                z = x0
    finally:
        for handle in handles:
            handle.remove()
    return {"outside": counter.outside, "unit_inputs": counter.unit_inputs, "per_call": counter.per_call,
            "attention": counter.attention}


def image_memory(counts):
    """ImageMemory from count_lookahead's bytes."""
    largest = max(counts["per_call"], default=0)
    plain = counts["outside"] + sum(counts["per_call"]) + largest
    checkpointed = counts["outside"] + counts["unit_inputs"] + 2 * largest
    return ImageMemory(plain=plain, checkpointed=checkpointed, unguided=largest)


def pipeline_image_memory(pipe, guide, guide_side, resolution, lookahead_steps):
    """ImageMemory of a loaded pipeline and guide at `resolution`, in the pipeline's dtype."""
    unet, vae, meta_guide = _meta_models(pipe, guide, pipe.unet.dtype)
    latent_side = resolution // pipe.vae_scale_factor
    tokens = pipe.text_encoder.config.max_position_embeddings
    counts = count_lookahead(unet, vae, meta_guide, latent_side, tokens, unet.config.cross_attention_dim,
                             guide_side, lookahead_steps, pipe.unet.dtype)
    return image_memory(counts)


def largest_batch(free_bytes, per_image):
    """Images that fit in `free_bytes` at `per_image` bytes each, after the reserve and margin."""
    usable = (free_bytes - RESERVE_BYTES) * FRAGMENTATION
    return max(0, min(MAX_AUTO_BATCH, math.floor(usable / max(per_image, 1))))


def plan_batch(free_bytes, memory, guided, force_checkpointing=False):
    """(batch size, gradient checkpointing) for `free_bytes` of GPU memory: the largest batch
    without checkpointing, and checkpointing only where not even one image fits without it.
    Batch 0 means that not even one image fits."""
    if not guided:
        return largest_batch(free_bytes, memory.unguided), False
    plain = 0 if force_checkpointing else largest_batch(free_bytes, memory.plain)
    if plain >= 1:
        return plain, False
    return largest_batch(free_bytes, memory.checkpointed), True
