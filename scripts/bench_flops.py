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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from distdiff.fileio import run_cli  # noqa: E402
from models.classifiers import create_classifier, penultimate_features  # noqa: E402

# Architecture of CompVis/stable-diffusion-v1-4 (unet/config.json and vae/config.json), written
# out so the count needs no download; every other key is the diffusers default.
SD14_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                 attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD14_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD14_TEXT = dict(tokens=77, width=768)


def build(prior):
    """(unet, vae, latent side, image side, text tokens, text width) on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        if prior is None:
            unet, vae, text = UNet2DConditionModel(**SD14_UNET), AutoencoderKL(**SD14_VAE), SD14_TEXT
        else:
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

    def lookahead_with_grad():
        latents = z[:1].detach().requires_grad_(True)
        total = 0
        for _ in range(2):
            eps = unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
            x0 = latents - eps[:1]  # the DDIM x0 prediction is an affine map of eps
            images = vae.decode(x0).sample
            feats = penultimate_features(guide, torch.nn.functional.interpolate(
                images, size=guide_size, mode="bilinear", antialias=True))
            total = total + feats.norm(dim=1).sum()
            latents = x0
        total.backward()

    with torch.no_grad():
        flops = {"unet_cfg": count(unet_call), "vae_decode": count(decode_call),
                 "vae_encode": count(lambda: vae.encode(image)), "guide": count(guide_call)
                 - count(decode_call)}
    flops["lookahead_P2_fwd_bwd"] = count(lookahead_with_grad)
    return flops


def summary(name, flops, steps, ratio):
    """Per-image totals (GFLOP) and the predicted guided/unguided cost ratio."""
    unguided = steps * flops["unet_cfg"] + flops["vae_decode"] + flops["vae_encode"] / ratio
    guided = unguided + flops["lookahead_P2_fwd_bwd"]
    g = {k: round(v / 1e9, 2) for k, v in flops.items()}
    return {"model": name, "gflop": g, "unguided_gflop": round(unguided / 1e9, 1),
            "guided_gflop": round(guided / 1e9, 1), "predicted_ratio": round(guided / unguided, 3)}


def main(args):
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
        rows.append(summary(name, per_image_flops(unet, vae, guide, latent, side, tokens, width, guide_size),
                            steps, args.expand_ratio))
    for row in rows:
        print(f"\n{row['model']}: GFLOP per call {row['gflop']}")
        print(f"  per image: unguided {row['unguided_gflop']} GFLOP, guided {row['guided_gflop']} GFLOP, "
              f"predicted time ratio {row['predicted_ratio']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="checkpoint/prior/digits", help="local diffusers folder to compare")
    parser.add_argument("--guide_arch", default="resnet_small", help="guide of the local model")
    parser.add_argument("--guide_size", type=int, default=32, help="guide input side of the local model")
    parser.add_argument("--sd_guide", default="resnet50", help="guide at SD scale (the paper's ResNet-50)")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--num_steps", type=int, default=50)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--expand_ratio", type=int, default=5)
    parser.add_argument("--out", default="bench/flops.json")
    run_cli(main, parser.parse_args())
