"""Expansion cost: plain img2img vs DistDiff guidance, per configuration, in one process.

    python studies/bench_expand.py                         # digits prior: batch 1/4/8/16, 3 repeats
    python studies/bench_expand.py --quick                 # CI smoke mode: batch 2, 1 repeat
    # SD-1.4's architecture with random weights (nothing downloaded), reduced schedule, on the CPU:
    python studies/bench_expand.py --model shape:sd14 --batch_sizes 1 --repeats 1 --num_steps 6 \
        --guidance_step 3 --variants plain checkpointing --out bench/expand_sd14.json
    # on a GPU: the real model (or shape:sd14), the paper's schedule, several precisions and options
    python studies/bench_expand.py --model CompVis/stable-diffusion-v1-4 --device cuda --precision fp16 \
        --batch_sizes 1 4 8 16 --variants plain checkpointing channels_last compile

For each batch size and variant, unguided (`--guidance none`) and guided (`transform`, without the
optional energy measurement, i.e. the paper's algorithm) run the same sources and per-item noise:
a warm-up batch (which also gives the peak memory), then --repeats timed runs of --items images,
interleaved so that drift on a shared machine hits both modes alike. Reported: s/image (median),
the median paired guided/unguided time ratio, per-stage times of one guided batch (the sampler's
named stages, distdiff/timing.py), and peak memory (process RSS high-water mark on the CPU,
torch.cuda.max_memory_allocated on CUDA).

A reduced schedule (--num_steps with --guidance_step inside it) keeps SD-scale runs short: the
report scales the denoising to the full schedule (--full_steps, 50 at strength 0.5 = 25 UNet
calls), s/image = measured - denoise + denoise * (full denoised steps / measured ones), and says so.
With a `shape:` model the guide is a randomly initialised --guide_arch at 224 px with random unit
prototypes: the cost of a network depends on its shape, not on its weights.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from distdiff import DistDiffError
from distdiff import expansion
from distdiff import generation as ex
from distdiff import registry, shards
from distdiff.devices import configure_cpu, pipeline_dtype, resolve_device
from distdiff.domains import COUNT, INDEX, Number, OneLineParser, Text
from distdiff.features import GuideInput
from distdiff.fileio import atomic_save_image, atomic_write_json
from distdiff.options import add_runtime_flags, run_cli
from distdiff.pipeline import finish_pipeline, load_pipeline, speed_up
from distdiff.prototype_store import PrototypeConfig
from distdiff.runs import default_guide_ckpt, setup_logging
from studies.grid import save_figure
from distdiff.sampler import GuidedSampler, draw_item, item_generator
from distdiff.settings import GuidanceConfig, SampleConfig
from distdiff.timing import stage_timer
from embedded.sd_shapes import SHAPE_PREFIX, check_shape, shape_name, shape_pipeline
from models.classifiers import create_classifier

STAGES = ("vae_encode", "denoise_unet", "guidance_step", "lookahead_unet", "lookahead_vae_decode",
          "guide_forward", "guidance_backward", "final_decode", "image_write")
# Options a variant may combine with "+" (e.g. checkpointing+decode_half): pipeline options, and the
# guidance's look-ahead decoded at half resolution (HalfDecodeSampler; no expansion flag: it was
# tried and dropped, docs/performance.md).
OPTIONS = ("plain", "checkpointing", "channels_last", "compile", "decode_half")


class HalfDecodeSampler(GuidedSampler):
    """The look-ahead's x0 decoded from a latent resized by 0.5 (a 256-px decode at SD scale, still
    above the guide's 224 px): cuts the decoder's cost, the look-ahead's largest part."""

    def image_energy(self, x0, labels):
        x0 = torch.nn.functional.interpolate(x0, scale_factor=0.5, mode="bilinear", antialias=True)
        return super().image_energy(x0, labels)


class PeakRSS:
    """Highest resident set size (MB) seen while the context is open, polled every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def random_guide(arch, num_classes, device, groups=3, seed=0):
    """A randomly initialised guide at 224 px (ImageNet transform sizes) and random unit prototypes."""
    torch.manual_seed(seed)
    guide = create_classifier(arch, num_classes).eval().requires_grad_(False).to(device)
    meta = {"image_size": 224, "resize_size": 256, "mean": list(registry.IMAGENET_MEAN),
            "std": list(registry.IMAGENET_STD)}
    with torch.no_grad():
        dim = guide.forward_head(guide.forward_features(torch.zeros(1, 3, 224, 224, device=device)),
                                 pre_logits=True).shape[1]
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    protos = {"class_protos": unit(rng.normal(size=(num_classes, dim))).astype(np.float32),
              "group_protos": unit(rng.normal(size=(num_classes, groups, dim))).astype(np.float32),
              "group_mask": np.ones((num_classes, groups), bool)}
    return guide, GuideInput(meta).to(device), protos


def build(args, device):
    """Sources, guide, input mapping and prototypes (trained guide, or a random one for shapes)."""
    spec = registry.get_dataset(args.dataset)
    registry.ensure_prepared(spec)
    sources = expansion.load_sources(spec)
    if args.model.startswith("shape:") or args.random_guide:
        guide, guide_input, protos = random_guide(args.guide_arch if args.random_guide is None else args.random_guide,
                                                  len(sources.classes), device)
        return sources, guide, guide_input, protos
    guide_ckpt = args.guide_ckpt or str(default_guide_ckpt("checkpoint", args.dataset, args.guide_arch))
    guide, guide_input, meta = ex.load_guide(guide_ckpt, len(sources.classes), device)
    with tempfile.TemporaryDirectory() as tmp:  # the arrays are returned in memory; the file is not kept
        protos = ex.build_prototypes(Path(tmp) / "prototypes.npz", spec, sources, guide, meta, device, guide_ckpt,
                                     PrototypeConfig().cluster, PrototypeConfig().num_groups)
    return sources, guide, guide_input, protos


# A variant: options from OPTIONS joined by '+'.
VARIANT = Text("({0})(\\+({0}))*".format("|".join(OPTIONS)), f"options from {', '.join(OPTIONS)} joined by '+'")


def make_pipeline(args, device, variant):
    """The pipeline with one variant's options (a fresh load: compile and NHWC change modules)."""
    options = variant.split("+")
    dtype = pipeline_dtype(args.precision, device)
    if str(args.model).startswith(SHAPE_PREFIX):  # a published architecture with random weights
        name = shape_name(args.model)
        try:
            check_shape(name)
        except ValueError as err:
            raise DistDiffError(str(err)) from None
        pipe = finish_pipeline(shape_pipeline(name, dtype=dtype), device, args.model)
    else:
        pipe = load_pipeline(args.model, device, dtype)
    pipe = speed_up(pipe, "channels_last" in options, "compile" in options)
    if "checkpointing" in options:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()
    return pipe


def make_batches(sampler, sources, items, batch_size):
    """Inputs for `items` work items (copies of the first sources) cut into batches."""
    latents = ex.SourceLatents(sampler, sources)
    work = shards.work_items(sources.samples, ratio=1)[:items]
    batches = []
    for block in shards.blocks(work, batch_size):
        posts = [latents.get(it.index) for it in block]
        draws = [draw_item(item_generator(0, it.index, 0), sampler.latent_shape(), 1, 1, False) for it in block]
        batches.append((torch.stack([p[0] for p in posts]), torch.stack([p[1] for p in posts]),
                        torch.tensor([it.label for it in block]), draws))
    return batches


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_run(sampler, batches, device):
    """Seconds to sample every batch (decoded tensors; PNG writing is timed in the stage breakdown)."""
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        sampler.sample(*batch)
    sync(device)
    return time.perf_counter() - start


def run_with_peak(sampler, batches, device):
    """(seconds, peak MB) of one run over `batches`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        took = timed_run(sampler, batches, device)
    return took, (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss.peak)


def stage_breakdown(sampler, sources, batch_size, out_dir):
    """Seconds per named stage for one guided batch (its sources encoded afresh), plus the PNG
    writes of its images."""
    with stage_timer(sampler) as totals:
        batch = make_batches(sampler, sources, batch_size, batch_size)[0]
        images, _ = sampler.sample(*batch)
    stages = dict(totals)
    start = time.perf_counter()
    for j, image in enumerate(sampler.to_pil(images)):
        atomic_save_image(image, Path(out_dir) / f"{j}.png")
    stages["image_write"] = time.perf_counter() - start
    return stages


def full_schedule_seconds(seconds, denoise, measured_steps, full_steps):
    """Per-run time with the denoising scaled from `measured_steps` to `full_steps` UNet steps."""
    return seconds - denoise + denoise * full_steps / measured_steps


def measure_variant(args, device, variant, sources, guide, guide_input, protos):
    """Results of one variant: per batch size and mode, seconds per image and peak memory."""
    pipe = make_pipeline(args, device, variant)
    sample_cfg = SampleConfig(args.num_steps, args.strength, resolution=args.resolution)
    prompts = [[f"a photo of a {c}"] for c in sources.classes]
    sampler_cls = HalfDecodeSampler if "decode_half" in variant.split("+") else GuidedSampler
    samplers = {mode: sampler_cls(pipe, guide, guide_input, protos, prompts, sample_cfg,
                                  GuidanceConfig(mode=mode, guidance_step=args.guidance_step), device)
                for mode in ("none", "transform")}
    measured = args.num_steps - sample_cfg.start
    full = args.full_steps - SampleConfig(args.full_steps, args.strength).start
    order = [(m, bs) for bs in sorted(args.batch_sizes) for m in ("none", "transform")]
    batches = {key: make_batches(samplers[key[0]], sources, max(args.items, key[1]), key[1]) for key in order}
    # Warm-ups in ascending footprint order: freed memory stays mapped, so a later, smaller
    # configuration would otherwise report the larger one's peak.
    peaks = {key: run_with_peak(samplers[key[0]], batches[key][:1], device)[1] for key in order}
    seconds = {key: [] for key in order}
    stages = {key: [] for key in order}
    for _ in range(args.repeats):
        for key in order:
            with stage_timer(samplers[key[0]]) as totals:
                seconds[key].append(timed_run(samplers[key[0]], batches[key], device))
            stages[key].append(dict(totals))
    results = {}
    for mode, bs in order:
        n = sum(len(b[3]) for b in batches[(mode, bs)])
        per_run = [full_schedule_seconds(s, st.get("denoise_unet", 0.0), measured, full)
                   for s, st in zip(seconds[(mode, bs)], stages[(mode, bs)])]
        results.setdefault(mode, {})[str(bs)] = {
            "s_per_image": statistics.median(per_run) / n, "images_per_s": n / statistics.median(per_run),
            "measured_seconds": seconds[(mode, bs)], "peak_mb": peaks[(mode, bs)], "images": n}
    ratios = {str(bs): statistics.median(
        full_schedule_seconds(g, sg.get("denoise_unet", 0.0), measured, full)
        / full_schedule_seconds(p, sp.get("denoise_unet", 0.0), measured, full)
        for g, sg, p, sp in zip(seconds[("transform", bs)], stages[("transform", bs)],
                                seconds[("none", bs)], stages[("none", bs)])) for bs in args.batch_sizes}
    with tempfile.TemporaryDirectory() as tmp:
        breakdown = stage_breakdown(samplers["transform"], sources, max(args.batch_sizes), tmp)
    parameters = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder, guide) for p in m.parameters())
    return {"results": results, "time_ratio_guided_unguided": ratios, "parameters": parameters,
            "stages_s_one_guided_batch": breakdown, "stage_batch_size": max(args.batch_sizes),
            "denoised_steps": {"measured": measured, "scaled_to": full}}


def memory_limits(report, parameters, gpu_sizes=(24, 40, 80, 141), overhead_gb=1.0):
    """Activation MB per guided image (fp32 measured, fp16 = half) and the largest batch per GPU.

    per image = (peak guided - peak unguided) / batch at the largest measured batch of the same
    variant: the unguided run holds the same weights and sources but saves no activations for a
    backward pass. On a GPU the weights take 2 bytes per parameter in fp16 (4 in fp32) plus
    `overhead_gb` for the CUDA context and kernels' workspaces (an assumption); the rest divided by
    the per-image activation memory is the batch that fits.
    """
    out = {}
    for variant, data in report["variants"].items():
        bs = str(max(int(b) for b in data["results"]["transform"]))
        extra = data["results"]["transform"][bs]["peak_mb"] - data["results"]["none"][bs]["peak_mb"]
        per_image = {"fp32": extra / int(bs), "fp16": extra / int(bs) / 2}
        weights = {"fp32": parameters * 4 / 2**20, "fp16": parameters * 2 / 2**20}
        out[variant] = {"activation_mb_per_image": per_image, "weights_mb": weights, "overhead_gb": overhead_gb,
                        "largest_batch": {dtype: {str(gb): max(0, int((gb * 1024 - overhead_gb * 1024 - weights[dtype])
                                                                     // max(per_image[dtype], 1e-9)))
                                                  for gb in gpu_sizes} for dtype in ("fp32", "fp16")}}
    return out


def table(variant, data):
    """Markdown rows of one variant: s/image guided and unguided, paired ratio, peak memory."""
    lines = []
    for bs in sorted(data["results"]["none"], key=int):
        plain, guided = data["results"]["none"][bs], data["results"]["transform"][bs]
        lines.append(f"| {variant} | {bs} | {plain['s_per_image']:.3g} | {guided['s_per_image']:.3g} | "
                     f"{data['time_ratio_guided_unguided'][bs]:.2f} | {plain['peak_mb']:.0f} / {guided['peak_mb']:.0f} |")
    return lines


def plot(report, path):
    """Throughput vs batch size (both modes) and the guided batch's stage times, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = next(iter(report["variants"].values()))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, label in (("none", "SD img2img (unguided)"), ("transform", "DistDiff (guided)")):
        sizes = sorted(int(bs) for bs in data["results"][mode])
        left.plot(sizes, [data["results"][mode][str(bs)]["images_per_s"] for bs in sizes], "o-", label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(bs) for bs in sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("images / s")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    left.set_title(f"{report['model']}, {report['device']}, {report['threads']} threads", fontsize=9)
    stages = [name for name in STAGES if name in data["stages_s_one_guided_batch"]][::-1]
    right.barh(stages, [1000 * data["stages_s_one_guided_batch"][name] for name in stages])
    right.set_xlabel("ms")
    right.set_title(f"one guided batch of {data['stage_batch_size']} (nested stages overlap)", fontsize=9)
    save_figure(fig, path, dpi=120)


def get_parser():
    parser = OneLineParser(description=__doc__)
    add = parser.add_argument
    add("--dataset", default="digits", help="source images come from its train split")
    add("--model", default="checkpoint/prior/digits", help="diffusers folder, Hub id, or shape:sd14 / shape:sd21base")
    add("--guide_ckpt", default=None, help="guide (default: the dataset's seed-1 guide)")
    add("--guide_arch", default="resnet_small", help="arch of the default guide path; of the random guide for shapes")
    add("--random_guide", default=None, metavar="ARCH",
        help="a random-weight guide of this arch at 224 px (default for shape: models: resnet50)")
    add("--batch_sizes", type=COUNT, nargs="+", default=[1, 4, 8, 16], help="batch sizes to time")
    add("--variants", nargs="+", default=["plain"], type=VARIANT,
        help="configurations to time, each options joined by '+': plain, checkpointing (--gradient_checkpointing), "
             "channels_last, compile, decode_half (the look-ahead decoded at half resolution)")
    add("--items", type=COUNT, default=32, help="images per timed run (at least one batch)")
    add("--repeats", type=COUNT, default=3, help="timed runs per configuration (median)")
    add("--num_steps", type=COUNT, default=50, help="DDIM steps of the timed schedule")
    add("--strength", type=Number(float, 0, 1, low_open=True), default=0.5, help="img2img strength")
    add("--guidance_step", type=INDEX, default=20, help="M (must fall inside the timed schedule)")
    add("--full_steps", type=COUNT, default=50, help="schedule the per-image times are scaled to")
    add("--resolution", type=Number(int, 8, multiple_of=8), default=None, help="sampling size (default: native)")
    add("--quick", action="store_true", help="smoke mode: batch 2, 2 items, 1 repeat")
    add("--out", default="bench/expand.json", help="JSON report")
    add("--figure", default=None, help="also plot the first variant here (e.g. figure/bench_expand.png)")
    add_runtime_flags(parser, precision_help="pipeline dtype (CUDA only)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.quick:
        args.batch_sizes, args.repeats, args.items = [2], 1, 2
    if args.model.startswith("shape:") and args.random_guide is None:
        args.random_guide = "resnet50"  # the paper's guide, at 224 px
    device = resolve_device(args.device)
    configure_cpu(args.threads)
    pipeline_dtype(args.precision, device)  # fp16 on the CPU fails here, before any work
    sources, guide, guide_input, protos = build(args, device)
    report = {"device": str(device), "threads": torch.get_num_threads(), "model": args.model,
              "precision": args.precision, "items": args.items, "repeats": args.repeats,
              "schedule": {"num_steps": args.num_steps, "strength": args.strength, "guidance_step": args.guidance_step,
                           "full_steps": args.full_steps},
              "torch": torch.__version__, "variants": {}}
    for variant in args.variants:
        report["variants"][variant] = measure_variant(args, device, variant, sources, guide, guide_input, protos)
        report["parameters"] = report["variants"][variant].pop("parameters")
    report["memory_limits"] = memory_limits(report, report["parameters"])
    atomic_write_json(args.out, report)
    if args.figure:
        plot(report, args.figure)
    first = next(iter(report["variants"].values()))
    scale = first["denoised_steps"]
    print(f"{args.model} on {device} ({report['threads']} threads, {args.precision}); per-image times with "
          f"{scale['measured']} timed denoising steps scaled to {scale['scaled_to']}")
    print("| variant | batch | SD img2img s/image | DistDiff s/image | time ratio guided/unguided | peak MB (SD / DistDiff) |")
    print("|---|---|---|---|---|---|")
    for variant, data in report["variants"].items():
        print("\n".join(table(variant, data)))
    for variant, data in report["variants"].items():
        stages = data["stages_s_one_guided_batch"]
        print(f"\n{variant}: stages of one guided batch of {data['stage_batch_size']} (s, nested stages overlap):")
        for name in STAGES:
            if name in stages:
                print(f"  {name:22s} {stages[name]:9.3f}")
    for variant, limits in report["memory_limits"].items():
        print(f"{variant}: activation memory per guided image {limits['activation_mb_per_image']['fp32']:.0f} MB fp32 "
              f"({limits['activation_mb_per_image']['fp16']:.0f} MB fp16); largest fp16 batch "
              + ", ".join(f"{gb} GB: {n}" for gb, n in limits["largest_batch"]["fp16"].items()))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
