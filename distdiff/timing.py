"""Stage timing of a GuidedSampler, installed from outside: module hooks and method wrappers.

    with stage_timer(sampler) as totals:      # {stage: seconds}, filled while the block runs
        sampler.sample(...)

The sampler itself holds no timing code. Forward hooks time the model calls (CUDA-synchronised),
split by whether autograd is on, which is what separates the guidance's look-ahead from plain
denoising: `denoise_unet` / `lookahead_unet`, `final_decode` / `lookahead_vae_decode`,
`vae_encode` and `guide_forward`. The guidance applications are timed through the sampler's
`guidance_span` hook (a context manager it enters around each one), as `guidance_step`; the
guide's timm methods are wrapped on the guide object. The stages inside it overlap with it, and
`guidance_backward` is what remains of it after its look-ahead forwards (the backward pass, with
any recomputation under gradient checkpointing).
"""
import contextlib
import time
from collections import defaultdict

import torch

LOOKAHEAD_PARTS = ("lookahead_unet", "lookahead_vae_decode", "guide_forward")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def stage_timer(sampler):
    """Time `sampler`'s stages while the block runs; yields the totals dict."""
    totals, starts, handles = defaultdict(float), {}, []

    def hook(module, grad_name, plain_name):
        def pre(*_):
            _sync()
            starts[module] = time.perf_counter()

        def post(*_):
            _sync()
            name = grad_name if torch.is_grad_enabled() else plain_name
            totals[name] += time.perf_counter() - starts.pop(module)
        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    def wrap(obj, method_name, stage):
        """Time a method of one object; an instance attribute shadows the class's method."""
        method = getattr(obj, method_name)

        def run(*args, **kwargs):
            _sync()
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                _sync()
                totals[stage] += time.perf_counter() - start
        setattr(obj, method_name, run)
        wrapped.append((obj, method_name))

    vae, wrapped = sampler.pipe.vae, []
    hook(sampler.pipe.unet, "lookahead_unet", "denoise_unet")
    hook(vae.decoder, "lookahead_vae_decode", "final_decode")
    hook(vae.encoder, "vae_encode", "vae_encode")
    # The guide is called through timm's forward_features / forward_head, not its forward.
    for method_name in ("forward_features", "forward_head"):
        wrap(sampler.guide, method_name, "guide_forward")
    @contextlib.contextmanager
    def guidance_span():
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            totals["guidance_step"] += time.perf_counter() - start
    sampler.guidance_span = guidance_span
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()
        for obj, method_name in wrapped:
            delattr(obj, method_name)
        sampler.guidance_span = contextlib.nullcontext
        if "guidance_step" in totals:
            totals["guidance_backward"] = totals["guidance_step"] - sum(totals[p] for p in LOOKAHEAD_PARTS)
