"""FLOPs per generated image, plain img2img vs DistDiff guidance, at SD-1.4 scale and for the
digits prior: why the guidance overhead measured on a tiny model differs from the paper's +4 %.

    python studies/bench_flops.py                          # SD-1.4 + ResNet-50 guide, and the digits prior
    python studies/bench_flops.py --prior checkpoint/prior/digits --guide_arch resnet_small

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
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from distdiff import memory
from distdiff.domains import COUNT, Number, OneLineParser
from distdiff.options import run_cli
from embedded.sd_shapes import SHAPES, build_shape
from models.classifiers import create_classifier, penultimate_features

TEXT_ENCODER_BYTES_FP16 = 123_060_480 * 2  # CLIP ViT-L/14 text encoder (embedded/sd_shapes.py's count) in fp16


def build(prior):
    """(unet, vae, latent side, image side, text tokens, text width) on the meta device: SD-1.4's
    published shapes (embedded/sd_shapes.py) when `prior` is None, else a local folder's configs."""
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
    return flops


def memory_rows(unet, vae, guide, latent, tokens, width, guide_size, gpu_gib=(24, 40, 80)):
    """GiB per image by distdiff.memory (the model behind --batch_size auto) in fp32 and fp16, and
    the batch it plans for GPUs of `gpu_gib` in fp16 (free memory = the card less the weights)."""
    per_dtype, weights = {}, {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        unet, vae = unet.to(dtype), vae.to(dtype)
        counts = memory.count_lookahead(unet, vae, guide, latent, tokens, width, guide_size, 2, dtype)
        per_dtype[name] = memory.image_memory(counts)
        weights[name] = sum(p.numel() * p.element_size() for m in (unet, vae) for p in m.parameters()) + \
            sum(p.numel() * 4 for p in guide.parameters())  # the guide stays fp32
    fp16 = per_dtype["fp16"]
    batches = {}
    for gib in gpu_gib:
        free = gib * memory.GIB - weights["fp16"] - TEXT_ENCODER_BYTES_FP16
        batches[str(gib)] = {"plain": memory.largest_batch(free, fp16.plain),
                             "checkpointed": memory.largest_batch(free, fp16.checkpointed),
                             "auto": memory.plan_batch(free, fp16, guided=True),
                             "unguided": memory.largest_batch(free, fp16.unguided)}
    return {"gib_per_image": {k: {part: round(v / memory.GIB, 2) for part, v in vars(m).items()}
                              for k, m in per_dtype.items()}, "fp16_largest_batch": batches}


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
    parser = OneLineParser(description=__doc__)
    add = parser.add_argument
    add("--prior", default="checkpoint/prior/digits", help="local diffusers folder to compare")
    add("--guide_arch", default="resnet_small", help="guide of the local model")
    add("--guide_size", type=COUNT, default=32, help="guide input side of the local model")
    add("--sd_guide", default="resnet50", help="guide at SD scale (the paper's ResNet-50)")
    add("--num_classes", type=COUNT, default=10, help="classes of the guide's head")
    add("--num_steps", type=COUNT, default=50, help="DDIM steps")
    add("--strength", type=Number(float, 0, 1, low_open=True), default=0.5, help="img2img strength")
    add("--expand_ratio", type=COUNT, default=5, help="copies per source (encode cost is shared)")
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
        flops = per_image_flops(unet, vae, guide, latent, side, tokens, width, guide_size)
        row = summary(name, flops, steps, args.expand_ratio)
        row["memory"] = memory_rows(unet, vae, guide, latent, tokens, width, guide_size)
        rows.append(row)
    for row in rows:
        print(f"\n{row['model']}: GFLOP per call {row['gflop']}")
        print(f"  per image: unguided {row['unguided_gflop']} GFLOP, guided {row['guided_gflop']} GFLOP, "
              f"predicted time ratio {row['predicted_ratio']:.2f} ({row['predicted_ratio_decode_half']:.2f} with the "
              "look-ahead decoded at half resolution)")
        mem = row["memory"]
        for dtype, parts in mem["gib_per_image"].items():
            print(f"  memory per image ({dtype}, distdiff/memory.py): guided {parts['plain']} GiB, with gradient "
                  f"checkpointing {parts['checkpointed']} GiB, unguided {parts['unguided']} GiB")
        print("  | GPU | largest fp16 guided batch, plain | with checkpointing | --batch_size auto | unguided |")
        print("  |---|---|---|---|---|")
        for gib, b in mem["fp16_largest_batch"].items():
            auto = f"{b['auto'][0]}{' (checkpointing)' if b['auto'][1] else ''}"
            print(f"  | {gib} GiB | {b['plain']} | {b['checkpointed']} | {auto} | {b['unguided']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
