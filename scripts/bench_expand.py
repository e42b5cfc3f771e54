"""Expansion throughput: plain img2img vs DistDiff guidance, per batch size, in one process.

    python scripts/bench_expand.py                         # digits prior, batch 1/4/8/16, 3 repeats
    python scripts/bench_expand.py --quick                 # CI smoke mode: batch 1 and 2, 1 repeat
    python scripts/bench_expand.py --model CompVis/stable-diffusion-v1-4 --dataset caltech-101 \
        --device cuda --precision fp16 --batch_sizes 1 4 8

Same pipeline, same source images, a warm-up batch per configuration, then --repeats timed runs
of --items images each, interleaved across configurations (see measure_all); the table reports
medians and the median paired guided/unguided ratio. Guidance is timed without the energy
measurement (--record_energy false), i.e. the paper's algorithm. A per-stage breakdown of one
guided batch comes from torch.profiler over the sampler's record_function labels. Peak memory is
the RSS high-water mark during each configuration's warm-up batch (a polling thread) on the CPU,
and torch.cuda.max_memory_allocated on CUDA. Results go to bench/expand.json (and a plot to
--figure).
"""
import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from distdiff import registry
from distdiff import expansion as ex
from distdiff import shards
from distdiff.devices import configure_cpu, pipeline_dtype, resolve_device
from distdiff.fileio import atomic_save_image, atomic_write_json
from distdiff.guidance import GuidanceConfig
from distdiff.options import run_cli
from distdiff.pipeline import load_pipeline, speed_up
from distdiff.runs import default_guide_ckpt, setup_logging
from distdiff.sampler import SampleConfig, draw_item

STAGES = ("vae_encode", "denoise_unet", "guidance_step", "lookahead_unet", "lookahead_vae_decode",
          "guide_forward", "guidance_backward", "final_decode", "image_write")


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


def build(args, device):
    """Sources, guide, prototypes and one sampler per guidance mode, all sharing the pipeline."""
    spec = registry.get_dataset(args.dataset)
    registry.ensure_prepared(spec)
    sources = ex.load_sources(spec)
    guide, guide_input, meta = ex.load_guide(args.guide_ckpt, len(sources.classes), device)
    protos = ex.build_prototypes(Path(tempfile.mkdtemp()) / "prototypes.npz", spec, sources, guide, meta, device,
                                 args.guide_ckpt)
    pipe = speed_up(load_pipeline(args.model, device, pipeline_dtype(args.precision, device)),
                    args.channels_last, args.compile)
    sample_cfg = SampleConfig(resolution=args.resolution)
    samplers = {mode: ex.build_sampler(pipe, guide, guide_input, protos, spec, sources.classes, sample_cfg,
                                       GuidanceConfig(mode=mode, record_energy=False), device)
                for mode in ("none", "transform")}
    return sources, samplers


def make_batches(sampler, sources, items, batch_size):
    """Inputs for `items` work items (copies of the first sources) cut into batches."""
    latents = ex.SourceLatents(sampler, sources)
    work = shards.work_items(sources.samples, ratio=1)[:items]
    batches = []
    for block in shards.blocks(work, batch_size):
        posts = [latents.get(it.index) for it in block]
        draws = [draw_item(shards.item_generator(0, it.index, 0), sampler.latent_shape(), 1) for it in block]
        batches.append((torch.stack([p[0] for p in posts]), torch.stack([p[1] for p in posts]),
                        torch.tensor([it.label for it in block]), draws))
    return batches


def timed_run(sampler, batches, device):
    """Seconds to sample every batch (decoded image tensors; PNG writing runs on the expander's
    writer thread and is timed separately in the stage breakdown)."""
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        sampler.sample(*batch)
    sync(device)
    return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_all(samplers, sources, args, device):
    """Images/s per (mode, batch size) and the paired guided/unguided time ratio.

    Repeats are interleaved: each repeat times every batch size, unguided then guided back to
    back, so slow drift on a shared machine hits both modes of a pair alike. images/s is the
    median over repeats; the ratio is the median of the per-repeat paired ratios. Peak memory
    comes from the warm-up batch of each configuration, run in ascending footprint order (batch
    size, then unguided before guided): freed memory stays mapped by the allocator, so a peak
    taken after a larger configuration would report that configuration's footprint instead.
    """
    modes = ("none", "transform")
    order = [(m, bs) for bs in sorted(args.batch_sizes) for m in modes]
    batches = {key: make_batches(samplers[key[0]], sources, args.items, key[1]) for key in order}
    peaks = {key: run_with_peak(samplers[key[0]], batches[key][:1], device)[1] for key in order}
    seconds = {key: [] for key in order}
    for _ in range(args.repeats):
        for key in order:
            seconds[key].append(timed_run(samplers[key[0]], batches[key], device))  # no RSS poller
    results = {m: {str(bs): {"images_per_s": args.items / statistics.median(seconds[(m, bs)]),
                             "seconds": seconds[(m, bs)], "peak_mb": peaks[(m, bs)]}
                   for bs in args.batch_sizes} for m in modes}
    ratios = {str(bs): statistics.median(g / p for g, p in zip(seconds[("transform", bs)],
                                                                 seconds[("none", bs)]))
              for bs in args.batch_sizes}
    return results, ratios


def run_with_peak(sampler, batches, device):
    """(seconds, peak MB) for one run over `batches` (the RSS poller costs a little CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        took = timed_run(sampler, batches, device)
    return took, (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss.peak)


def stage_breakdown(sampler, sources, batch_size, out_dir):
    """Self-inclusive wall time (ms) per labelled stage for one guided batch, plus image writes."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sampler_fresh_cache = make_batches(sampler, sources, batch_size, batch_size)  # times vae_encode
        images, _ = sampler.sample(*sampler_fresh_cache[0])
    totals = {}
    for event in prof.key_averages():
        if event.key in STAGES:
            totals[event.key] = event.cpu_time_total / 1000.0
    start = time.perf_counter()
    for j, image in enumerate(sampler.to_pil(images)):
        atomic_save_image(image, Path(out_dir) / f"{j}.png")
    totals["image_write"] = 1000.0 * (time.perf_counter() - start)
    return totals


def table(results, ratios, batch_sizes):
    """Markdown table: images/s guided and unguided, paired ratio, batch scaling, peak memory."""
    lines = ["| batch | SD img2img (img/s) | DistDiff (img/s) | time ratio guided/unguided | "
             "DistDiff batch-N / batch-1 | peak MB (SD / DistDiff) |", "|---|---|---|---|---|---|"]
    base = results["transform"][str(batch_sizes[0])]["images_per_s"]
    for bs in batch_sizes:
        plain, guided = results["none"][str(bs)], results["transform"][str(bs)]
        lines.append(f"| {bs} | {plain['images_per_s']:.2f} | {guided['images_per_s']:.2f} | "
                     f"{ratios[str(bs)]:.2f} | "
                     f"{guided['images_per_s'] / base:.2f} | {plain['peak_mb']:.0f} / {guided['peak_mb']:.0f} |")
    return "\n".join(lines)


def plot(report, path):
    """Throughput vs batch size (both modes) and the guided batch's stage times, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, label in (("none", "SD img2img (unguided)"), ("transform", "DistDiff (guided)")):
        sizes = sorted(int(bs) for bs in report["results"][mode])
        left.plot(sizes, [report["results"][mode][str(bs)]["images_per_s"] for bs in sizes], "o-", label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(bs) for bs in sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("images / s")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    left.set_title(f"{Path(report['model']).name}, {report['device']}, {report['threads']} threads", fontsize=9)
    stages = [name for name in STAGES if name in report["stages_ms_one_guided_batch"]][::-1]
    right.barh(stages, [report["stages_ms_one_guided_batch"][name] for name in stages])
    right.set_xlabel("ms")
    right.set_title(f"one guided batch of {report['stage_batch_size']} (nested stages overlap)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logging()
    if args.quick:
        args.batch_sizes, args.repeats, args.items = [1, 2], 1, 2
    if args.guide_ckpt is None:
        args.guide_ckpt = str(default_guide_ckpt("checkpoint", args.dataset, args.guide_arch))
    device = resolve_device(args.device)
    configure_cpu(args.threads)
    sources, samplers = build(args, device)
    results, ratios = measure_all(samplers, sources, args, device)
    with tempfile.TemporaryDirectory() as tmp:
        stages = stage_breakdown(samplers["transform"], sources, max(args.batch_sizes), tmp)
    report = {"device": str(device), "threads": torch.get_num_threads(), "model": args.model,
              "channels_last": args.channels_last, "compile": args.compile,
              "items": args.items, "repeats": args.repeats, "results": results,
              "time_ratio_guided_unguided": ratios,
              "stages_ms_one_guided_batch": stages, "stage_batch_size": max(args.batch_sizes),
              "torch": torch.__version__}
    atomic_write_json(args.out, report)
    if args.figure:
        plot(report, args.figure)
    print(table(results, ratios, args.batch_sizes))
    print(f"\nstage breakdown, one guided batch of {max(args.batch_sizes)} (ms, nested stages overlap):")
    for name in STAGES:
        if name in stages:
            print(f"  {name:22s} {stages[name]:9.1f}")
    print(f"\nwritten {args.out}")
    return 0


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="source images come from its train split")
    parser.add_argument("--model", default="checkpoint/prior/digits", help="diffusers folder or hub id")
    parser.add_argument("--guide_ckpt", default=None, help="guide (default: the dataset's seed-1 guide)")
    parser.add_argument("--guide_arch", default="resnet_small", help="arch of the default guide path")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--items", type=int, default=32, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--resolution", type=int, default=None, help="sampling size (default: native)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--channels_last", action="store_true", help="NHWC UNet and VAE")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 2, 2 items, 1 repeat")
    parser.add_argument("--out", default="bench/expand.json")
    parser.add_argument("--figure", default=None, help="also plot the results here (e.g. figure/bench_expand.png)")
    return parser


if __name__ == "__main__":
    run_cli(main)
