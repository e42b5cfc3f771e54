"""FLOPs per generated image, plain img2img vs DistDiff guidance, at SD-1.4 scale and for the
digits prior: why the guidance overhead measured on a tiny model differs from the paper's +4 %.

    python scripts/bench_flops.py                          # SD-1.4 + ResNet-50 guide, and the digits prior
    python scripts/bench_flops.py --prior checkpoint/prior/digits --guide_arch resnet_small

Every module is built on the meta device from its architecture config (SD-1.4's published
UNet/VAE shapes, or a local diffusers folder's configs), so nothing is downloaded or computed:
torch.utils.flop_counter counts the FLOPs of each call from the tensor shapes. Backward passes
are counted by running autograd on the meta tensors.

Per image, with T = num_steps * strength denoised steps and classifier-free guidance (the UNet
sees a batch of 2 per image):
  unguided = T * UNet(2) + VAE decode + VAE encode / expand_ratio  (sources are encoded once)
  guided   = unguided + the look-ahead: P * (UNet(2) + VAE decode + guide) forward, and the
             backward through all of it, once per guidance application.
"""
import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from distdiff.options import run_cli
from models.classifiers import create_classifier, penultimate_features
from models.sd_shapes import SHAPES, build_shape

def build(prior):
    """(unet, vae, latent side, image side, text tokens, text width) on the meta device: SD-1.4's
    published shapes (models/sd_shapes.py) when `prior` is None, else a local folder's configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if prior is None:
        parts = build_shape("sd14", device="meta")
        unet, vae = parts["unet"], parts["vae"]
        text = dict(tokens=SHAPES["sd14"]["text"]["max_position_embeddings"], width=unet.config.cross_attention_dim)
    else:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(prior, "unet")))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(Path(prior, "vae")))
        text_cfg = json.loads(Path(prior, "text_encoder", "config.json").read_text())
        text = dict(tokens=text_cfg["max_position_embeddings"], width=unet.config.cross_attention_dim)
    # Frozen as in the sampler: the backward then computes input gradients only, no weight grads.
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = unet.config.sample_size
    return unet.eval(), vae.eval(), latent, latent * scale, text["tokens"], text["width"]


def count(fn):
    """FLOPs of fn() (forward and any backward it runs)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def saved_for_backward(fn, min_square=1024):
    """Bytes of the tensors autograd keeps for the backward pass of fn() (each storage once), and
    the part in square [..., L, L] tensors with L >= min_square: attention probability matrices,
    which the math attention kernel keeps and the flash / memory-efficient ones (CUDA, and the
    CPU's fp32 path) do not. On meta tensors, so nothing is allocated."""
    seen, kept, totals = set(), [], {"all": 0, "attention": 0}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in seen:
            seen.add(id(base))
            kept.append(base)  # keeps the id unique while the pass runs
            size = base.numel() * base.element_size()
            totals["all"] += size
            if base.dim() >= 3 and base.shape[-1] == base.shape[-2] >= min_square:
                totals["attention"] += size
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return totals


def per_image_flops(unet, vae, guide, latent, side, tokens, width, guide_size):
    """FLOPs of each model call the sampler makes for one image."""
    z = torch.empty(2, 4, latent, latent, device="meta")
    context = torch.empty(2, tokens, width, device="meta")
    t = torch.tensor([500], device="meta")
    image = torch.empty(1, 3, side, side, device="meta")

    def unet_call():
        return unet(z, t, encoder_hidden_states=context).sample

    def decode_call():
        return vae.decode(z[:1]).sample

    def guide_call():
        return penultimate_features(guide, torch.nn.functional.interpolate(
            decode_call(), size=guide_size, mode="bilinear", antialias=True))

    def lookahead_forward(decode_scale=1.0):
        latents = z[:1].detach().requires_grad_(True)
        total = 0
        for _ in range(2):
            eps = unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
            x0 = latents - eps[:1]  # the DDIM x0 prediction is an affine map of eps
            small = x0 if decode_scale == 1.0 else torch.nn.functional.interpolate(
                x0, scale_factor=decode_scale, mode="bilinear", antialias=True)
            images = vae.decode(small).sample
            feats = penultimate_features(guide, torch.nn.functional.interpolate(
                images, size=guide_size, mode="bilinear", antialias=True))
            total = total + feats.norm(dim=1).sum()
            latents = x0
        return total

    def lookahead_with_grad(decode_scale=1.0):
        lookahead_forward(decode_scale).backward()

    with torch.no_grad():
        flops = {"unet_cfg": count(unet_call), "vae_decode": count(decode_call),
                 "vae_encode": count(lambda: vae.encode(image)), "guide": count(guide_call)
                 - count(decode_call)}
    flops["lookahead_P2_fwd_bwd"] = count(lookahead_with_grad)
    flops["lookahead_P2_fwd_bwd_decode_half"] = count(lambda: lookahead_with_grad(0.5))
    saved = {f"decode_scale_{scale:g}": saved_for_backward(lambda: lookahead_forward(scale)) for scale in (1.0, 0.5)}
    return flops, saved


def summary(name, flops, steps, ratio):
    """Per-image totals (GFLOP) and the predicted guided/unguided cost ratio."""
    unguided = steps * flops["unet_cfg"] + flops["vae_decode"] + flops["vae_encode"] / ratio
    guided = unguided + flops["lookahead_P2_fwd_bwd"]
    guided_half = unguided + flops["lookahead_P2_fwd_bwd_decode_half"]
    g = {k: round(v / 1e9, 2) for k, v in flops.items()}
    return {"model": name, "gflop": g, "unguided_gflop": round(unguided / 1e9, 1),
            "guided_gflop": round(guided / 1e9, 1), "predicted_ratio": round(guided / unguided, 3),
            "predicted_ratio_decode_half": round(guided_half / unguided, 3)}


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--prior", default="checkpoint/prior/digits", help="local diffusers folder to compare")
    add("--guide_arch", default="resnet_small", help="guide of the local model")
    add("--guide_size", type=int, default=32, help="guide input side of the local model")
    add("--sd_guide", default="resnet50", help="guide at SD scale (the paper's ResNet-50)")
    add("--num_classes", type=int, default=10, help="classes of the guide's head")
    add("--num_steps", type=int, default=50, help="DDIM steps")
    add("--strength", type=float, default=0.5, help="img2img strength")
    add("--expand_ratio", type=int, default=5, help="copies per source (encode cost is shared)")
    add("--out", default="bench/flops.json", help="JSON report")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    steps = int(args.num_steps * args.strength)
    rows = []
    for name, prior, guide_arch, guide_size in (
            ("SD-1.4 (512 px) + " + args.sd_guide, None, args.sd_guide, 224),
            (f"{args.prior} + {args.guide_arch}", args.prior, args.guide_arch, args.guide_size)):
        if prior is not None and not Path(prior).is_dir():
            print(f"skipping {prior}: not found (train it with scripts/train_prior.py)")
            continue
        unet, vae, latent, side, tokens, width = build(prior)
        with torch.device("meta"):
            guide = create_classifier(guide_arch, args.num_classes, False).eval()
        guide.requires_grad_(False)
        flops, saved = per_image_flops(unet, vae, guide, latent, side, tokens, width, guide_size)
        row = summary(name, flops, steps, args.expand_ratio)
        row["saved_for_backward_gib_fp32"] = {k: {part: round(v / 2**30, 3) for part, v in parts.items()}
                                              for k, parts in saved.items()}
        rows.append(row)
    for row in rows:
        print(f"\n{row['model']}: GFLOP per call {row['gflop']}")
        print(f"  per image: unguided {row['unguided_gflop']} GFLOP, guided {row['guided_gflop']} GFLOP, "
              f"predicted time ratio {row['predicted_ratio']:.2f} ({row['predicted_ratio_decode_half']:.2f} with the "
              "look-ahead decoded at half resolution)")
        for key, parts in row["saved_for_backward_gib_fp32"].items():
            print(f"  kept for the look-ahead's backward, one guided image, fp32, {key}: {parts['all']:.2f} GiB, of which "
                  f"{parts['attention']:.2f} GiB attention probabilities (math kernel only); fp16: half")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
