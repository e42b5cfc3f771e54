"""The acceptance run for a new GPU machine, in at most 8 minutes (scripts/gpu_check.sh).

    bash scripts/gpu_check.sh                       # on the GPU machine; report in $OUT or the work dir
    bash scripts/gpu_check.sh --cpu_smoke           # the same steps with tiny shapes on the CPU (the tests run it)

Each step prints PASS, FAIL or SKIP as it finishes, runs under its own time cap (and within the
total budget), and a failing step never hides the others; one JSON report holds every step's
numbers (`$OUT/gpu_check.json` when OUT is set, else `<workdir>/gpu_check.json`). Exit 1 when any
step failed. Offline: stand-ins with the real shapes replace every download.

Steps, with the time each should take on one H100 (from counted FLOPs, docs/performance.md: a
CFG UNet call is 1.6 TFLOP, a 512-px decode 2.5, the look-ahead's forward and backward 17, a guided
image 60; assuming 300 TFLOP/s sustained in fp16 and 60 in fp32, plus measured CPU-side costs):
 1 versions     torch, CUDA build, driver, the GPUs; FAIL when a GPU is listed but torch cannot use it (~2 s)
 2 pipeline     SD-1.4's shape (random weights) saved in fp16 into a temporary Hugging Face cache as
                CompVis/stable-diffusion-v1-4, loaded through the real Hub-id path; dtype, device and
                the DDIM scheduler asserted (~40 s: 1.07 B parameters initialised, 2.1 GB written and read)
 3 guide        stand-in Caltech-101 prepared, ResNet-50 guide trained 2 epochs on CUDA; training
                images/s (~40 s, mostly process start-up)
 4 gradients    the guidance gradient on (a, b) at SD-1.4 shape: fp16 loss-scaled and the authors' unscaled
                fp16 against fp32 (cosine, norm ratio, zero and non-finite counts) (~20 s: 3 x 17 TFLOP)
 5 memory       the ladder --batch_size auto relies on: measured peak vs predicted per image, plain and
                with checkpointing, at batch 1, 2 and the planned batch; then an out-of-memory recovery
                from twice the planned batch (~40 s)
 6 expand       expand_distdiff.py by Hub id at SD-1.4 shape, 2 sources x 5 copies, all defaults
                (batch auto, fp16); images/s and peak memory (~60 s: 10 x 60 TFLOP plus loading)
 7 torchrun     2 processes (one per GPU, or sharing one) give the images of one process (~40 s)
 8 speed-ups    --compile and --channels_last give the same images, only if the budget allows (~90 s)
Predicted total: about 5.5 minutes; the caps add up to more, and the 8-minute budget cuts the
last steps short rather than overrun (a step starts only with its cap's time left).
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SD14 = "CompVis/stable-diffusion-v1-4"
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes")
KEPT = ("Faces", "Leopards", "airplanes")


class StepTimeout(Exception):
    """A step ran past its cap."""


class Skip(Exception):
    """A step that cannot run here (says why)."""


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--cpu_smoke", "--cpu-smoke", action="store_true",
        help="tiny shapes on the CPU: the same steps, to keep this script working (the test suite runs it)")
    add("--budget", type=float, default=480.0, help="seconds for all steps together")
    add("--workdir", default=None, help="stand-ins and outputs (default: a temporary dir, removed afterwards)")
    add("--report", default=None, help="JSON report path (default: $OUT/gpu_check.json, else <workdir>/gpu_check.json)")
    add("--tolerance", type=float, default=3.0,
        help="largest mean |difference| in 8-bit levels between runs that must give the same images")
    return parser


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

class Context:
    """What the steps share: paths, device, the loaded pipeline, the report."""

    def __init__(self, args, work):
        self.args, self.work, self.cpu = args, work, args.cpu_smoke
        self.hf_cache = work / "hf" / "hub"
        self.env = dict(os.environ, DISTDIFF_DATA_ROOT=str(work / "data"), HF_HOME=str(work / "hf"),
                        HF_HUB_CACHE=str(self.hf_cache), HF_HUB_OFFLINE="1",
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.ckpt = work / "checkpoint"
        self.device, self.dtype, self.pipe, self.guide_ckpt, self.tiny, self.expanded = (None,) * 6
        # Expansions: 2 sources x 5 copies (2 blocks: one per torchrun rank); the smoke at 128 px, 10 steps.
        self.limit, self.schedule = (2, ["--num_steps", "10", "--guidance_step", "4", "--resolution", "128",
                                         "--device", "cpu"]) if self.cpu else (2, [])

    def run(self, argv, cap, name):
        """Run a command in the repository (its output in <work>/<name>.log); returns the output."""
        log = self.work / f"{name}.log"
        try:
            proc = subprocess.run([str(a) for a in argv], cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=max(cap, 1))
        except subprocess.TimeoutExpired:
            raise StepTimeout(f"`{Path(str(argv[1])).name}` ran past the step's cap") from None
        log.write_text(f"$ {' '.join(map(str, argv))}\n{proc.stdout}\n{proc.stderr}")
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).splitlines()
            errors = [line for line in lines if line.startswith("error:")] or lines[-1:] or ["no output"]
            raise AssertionError(f"`{Path(str(argv[1])).name}` exit {proc.returncode}: {errors[0][:200]} (see {log})")
        return proc.stdout + proc.stderr


def images(folder):
    """{relative path: int16 array} of the PNGs under `folder`."""
    import numpy as np
    from PIL import Image
    return {str(p.relative_to(folder)): np.asarray(Image.open(p), np.int16) for p in sorted(Path(folder).rglob("*.png"))}


def compare(folder, reference):
    """(mean |diff|, max |diff|) in 8-bit levels; AssertionError when the file sets differ."""
    a, b = images(folder), images(reference)
    assert a and a.keys() == b.keys(), f"{folder} and {reference} hold different files ({len(a)} vs {len(b)})"
    diffs = [abs(a[k] - b[k]) for k in a]
    return float(sum(d.mean() for d in diffs) / len(diffs)), int(max(d.max() for d in diffs))


def expand_cmd(ctx, exp, model, *extra):
    """expand_distdiff.py on the stand-in Caltech-101 with the step-3 guide, ctx.limit sources x 5 copies."""
    return [sys.executable, "expand_distdiff.py", "--dataset", "caltech-101", "--model", model, "--guide_ckpt",
            ctx.guide_ckpt, "--checkpoint_root", ctx.ckpt, "--limit", str(ctx.limit), "--exp", exp, *ctx.schedule,
            *extra]


def requires(*names):
    """Skip unless the named earlier results exist."""
    def check(ctx):
        missing = [n for n in names if getattr(ctx, n) is None]
        if missing:
            raise Skip(f"needs the result of an earlier step ({', '.join(missing)})")
    return check


# ---------------------------------------------------------------------------
# Steps: each returns (detail, numbers) or raises AssertionError (FAIL) / Skip
# ---------------------------------------------------------------------------

def step_versions(ctx):
    import diffusers
    import torch
    import transformers

    from distdiff.devices import cuda_report, listed_gpus

    listed = listed_gpus()
    numbers = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "diffusers": diffusers.__version__,
               "transformers": transformers.__version__, "python": platform.python_version(), "listed_gpus": listed,
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        numbers["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        ctx.device, ctx.dtype = torch.device("cuda", 0), torch.float16
        return f"{cuda_report()}; {', '.join(numbers['gpus'])}", numbers
    if ctx.cpu:
        ctx.device, ctx.dtype = torch.device("cpu"), torch.float32
        return f"CPU smoke ({cuda_report()})", numbers
    assert not listed, f"nvidia-smi lists {len(listed)} GPU(s) but torch cannot use CUDA ({cuda_report()})"
    raise AssertionError(f"no GPU: torch sees no CUDA device ({cuda_report()}); use --cpu_smoke on a CPU machine")


def step_pipeline(ctx):
    import torch

    from distdiff.pipeline import load_pipeline
    from embedded.rehearsal import hf_snapshot
    from embedded.sd_shapes import save_rehearsal_pipeline, save_shape_pipeline

    prompts = [f"a photo of a {c}" for c in KEPT]
    start = time.time()
    snapshot = hf_snapshot(SD14, ctx.hf_cache)
    if ctx.cpu:
        save_rehearsal_pipeline(snapshot, prompts)
    else:
        save_shape_pipeline("sd14", snapshot, prompts, dtype=torch.float16)
    saved = time.time() - start
    ctx.tiny = save_rehearsal_pipeline(ctx.work / "tiny_pipeline", prompts)  # steps 7 and 8
    start = time.time()
    pipe = load_pipeline(SD14, ctx.device, ctx.dtype)  # the real Hub-id path, from the temporary cache
    loaded = time.time() - start
    assert pipe.unet.dtype == ctx.dtype and pipe.vae.dtype == ctx.dtype, f"dtype {pipe.unet.dtype}, asked {ctx.dtype}"
    assert pipe.unet.device.type == ctx.device.type, f"UNet on {pipe.unet.device}"
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not config.clip_sample and config.steps_offset == 1
    ctx.pipe = pipe
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    return (f"{params / 1e6:,.1f} M parameters, {ctx.dtype}, {ctx.device}, DDIM (clip_sample False, steps_offset 1); "
            f"saved in {saved:.0f} s, loaded by Hub id in {loaded:.0f} s"), {"parameters": params, "save_s": saved,
                                                                              "load_s": loaded}


def step_guide(ctx, cap):
    from embedded.rehearsal import fabricate_caltech101

    fabricate_caltech101(ctx.work / "downloads", CLASSES, per_class=6)
    deadline = time.time() + cap
    ctx.run([sys.executable, "scripts/prepare_data.py", "caltech-101", "--source", ctx.work / "downloads",
             "--shots", "3"], deadline - time.time(), "prepare")
    arch = "resnet_small" if ctx.cpu else "resnet50"
    size = ["--image_size", "64", "--resize_size", "72", "--epochs", "1"] if ctx.cpu else ["--epochs", "2"]
    ctx.run([sys.executable, "train_original.py", "caltech-101", arch, "0.1", "False", "0", *size,
             "--output", ctx.ckpt, "--device", str(ctx.device.type)], deadline - time.time(), "train")
    run = ctx.ckpt / "caltech-101" / f"{arch}_unpretrained_lr0.1" / "seed1"
    results = json.loads((run / "results.json").read_text())
    rows = (run / "summary.csv").read_text().splitlines()
    seconds = float(rows[-1].split(",")[-1])
    ctx.guide_ckpt = run / "model_best.pth.tar"
    rate = results["n_train"] / seconds
    return (f"{arch} trained on {ctx.device.type}: {results['n_train']} images, last epoch {seconds:.1f} s "
            f"({rate:.1f} images/s, train + eval)"), {"train_images_per_s": rate, "epoch_s": seconds}


def guidance_fixture(ctx, pipe, batch=2):
    """A GuidedSampler on `pipe` with a random guide and random unit prototypes, and an energy of
    (a, b) at the guidance step for a fixed latent batch."""
    import torch

    from distdiff.features import GuideInput
    from distdiff.guidance import GuidanceConfig
    from distdiff.sampler import GuidedSampler, SampleConfig
    from models.classifiers import create_classifier

    torch.manual_seed(0)
    side = 64 if ctx.cpu else 224
    guide = create_classifier("resnet_small" if ctx.cpu else "resnet50", len(KEPT), False).to(ctx.device).eval()
    guide.requires_grad_(False)
    meta = {"resize_size": side, "image_size": side, "mean": [0.5] * 3, "std": [0.25] * 3}
    dim = guide.num_features
    protos = {"class_protos": torch.nn.functional.normalize(torch.randn(len(KEPT), dim), dim=-1),
              "group_protos": torch.nn.functional.normalize(torch.randn(len(KEPT), 3, dim), dim=-1),
              "group_mask": torch.ones(len(KEPT), 3, dtype=torch.bool)}
    prompts = [[f"a photo of a {c}"] for c in KEPT]
    sample_cfg = SampleConfig(resolution=128 if ctx.cpu else None)  # the smoke's CPU at 128 px, SD at 512
    sampler = GuidedSampler(pipe, guide, GuideInput(meta).to(ctx.device), protos, prompts, sample_cfg,
                            GuidanceConfig(), ctx.device)
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(batch, *sampler.latent_shape(), generator=generator).to(ctx.device)
    a = torch.rand(batch, 4, 1, 1, generator=generator).to(ctx.device)
    b = torch.randn(batch, 4, 1, 1, generator=generator).to(ctx.device)
    labels = torch.arange(batch, device=ctx.device) % len(KEPT)
    embeds = sampler.prompt_embeds[labels]
    index = sampler.guidance_at[0]

    def energy(a_, b_):
        return sampler.lookahead_energy((z * (1 + a_) + b_).to(pipe.unet.dtype), index, embeds, labels)
    return sampler, energy, a, b


def step_gradients(ctx):
    import copy

    import torch

    from distdiff.numerics import GUIDED, NONFINITE, ZERO_GRADIENT, scaled_grad

    requires("pipe")(ctx)
    half = torch.float16
    if ctx.cpu:  # the smoke's pipeline is fp32: a half copy on the CPU (bf16 where fp16 kernels are missing)
        reference_pipe, half_pipe = ctx.pipe, copy.deepcopy(ctx.pipe).to(dtype=half)
    else:
        half_pipe, reference_pipe = ctx.pipe, copy.deepcopy(ctx.pipe).to(dtype=torch.float32)
    results = {}
    for name, pipe, dtype, scales in (("fp32", reference_pipe, torch.float32, None),
                                      ("fp16 scaled", half_pipe, half, None),
                                      ("fp16 unscaled (authors)", half_pipe, half, (1.0,))):
        _, energy, a, b = guidance_fixture(ctx, pipe, batch=1)  # fp32 at SD-1.4 shape keeps ~23 GiB per image
        values, grads, status = scaled_grad(energy, [a, b], dtype, scales)
        flat = torch.cat([g.flatten() for g in grads]).double()
        results[name] = {"flat": flat, "energy": values.float().tolist(),
                         "zero_items": int((status == ZERO_GRADIENT).sum()),
                         "nonfinite_items": int((status == NONFINITE).sum()),
                         "zero_fraction": float((flat == 0).double().mean()), "guided": bool((status == GUIDED).all())}
    del reference_pipe, half_pipe  # the copy: ctx.pipe stays for the memory step
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    reference = results["fp32"]["flat"]
    numbers = {}
    for name, r in results.items():
        flat = r.pop("flat")
        r["cosine"] = float(torch.nn.functional.cosine_similarity(flat, reference, dim=0))
        r["norm_ratio"] = float(flat.norm() / reference.norm().clamp_min(1e-30))
        numbers[name] = r
    scaled = numbers["fp16 scaled"]
    detail = "; ".join(f"{n}: cosine {r['cosine']:.4f}, norm ratio {r['norm_ratio']:.3f}, zero items {r['zero_items']}, "
                       f"non-finite {r['nonfinite_items']}" for n, r in numbers.items() if n != "fp32")
    assert numbers["fp32"]["guided"], f"fp32 gradient itself lost: {numbers['fp32']}"
    assert scaled["guided"] and scaled["cosine"] > 0.99 and 0.9 < scaled["norm_ratio"] < 1.1, detail
    return detail + " (random weights: magnitudes differ from the trained model's)", numbers


def step_memory(ctx):
    import torch

    from distdiff import memory
    from distdiff.expansion import BatchSize
    from distdiff.numerics import scaled_grad

    requires("pipe")(ctx)
    pipe = ctx.pipe
    sampler, _, _, _ = guidance_fixture(ctx, pipe, batch=1)
    predicted = memory.pipeline_image_memory(pipe, sampler.guide, sampler.guide_input.image_size, sampler.resolution)
    cuda = ctx.device.type == "cuda"
    free = torch.cuda.mem_get_info(ctx.device)[0] if cuda else 80 * memory.GIB  # the smoke plans for 80 GB
    numbers = {"predicted_gib": {k: v / memory.GIB for k, v in vars(predicted).items()}, "free_gib": free / memory.GIB,
               "ladder": []}

    def guidance_pass(batch):
        _, energy, a, b = guidance_fixture(ctx, pipe, batch)
        scaled_grad(energy, [a, b], pipe.unet.dtype)

    worst = 0.0
    for checkpointing in (False, True):
        for module in (pipe.unet, pipe.vae):
            (module.enable_gradient_checkpointing if checkpointing else module.disable_gradient_checkpointing)()
        per_image = predicted.checkpointed if checkpointing else predicted.plain
        planned = memory.largest_batch(free, per_image) if cuda else 2  # the smoke only exercises the code
        for batch in sorted({1, 2, planned} - {0}):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(ctx.device)
                base = torch.cuda.memory_allocated(ctx.device)
            guidance_pass(batch)
            measured = (torch.cuda.max_memory_allocated(ctx.device) - base) / batch / memory.GIB if cuda else None
            row = {"checkpointing": checkpointing, "batch": batch, "planned": batch == planned,
                   "predicted_gib_per_image": per_image / memory.GIB, "measured_gib_per_image": measured}
            numbers["ladder"].append(row)
            if measured is not None:
                worst = max(worst, measured / (per_image / memory.GIB))
    for module in (pipe.unet, pipe.vae):
        module.disable_gradient_checkpointing()
    # Out-of-memory recovery: twice the planned plain batch must halve until it fits.
    start_batch = 2 * max(memory.largest_batch(free, predicted.plain), 1) if cuda else 2
    sizes = BatchSize(start_batch)
    sizes.run(lambda piece: guidance_pass(len(piece)), list(range(start_batch)))
    numbers.update(oom_start_batch=start_batch, oom_final_batch=sizes.size, worst_measured_over_predicted=worst)
    ladder = ", ".join(f"{'ckpt' if r['checkpointing'] else 'plain'} b{r['batch']}: "
                       + (f"{r['measured_gib_per_image']:.2f}/{r['predicted_gib_per_image']:.2f}"
                          if r["measured_gib_per_image"] is not None else f"-/{r['predicted_gib_per_image']:.2f}")
                       for r in numbers["ladder"])
    detail = (f"GiB per image measured/predicted: {ladder}; batch {start_batch} ran as {sizes.size}"
              + ("" if cuda else " (CPU: peaks not measured)"))
    assert worst <= 1.1, f"the model under-predicts (worst measured/predicted {worst:.2f}): {detail}"
    return detail, numbers


def step_expand(ctx, cap):
    requires("guide_ckpt", "pipe")(ctx)
    log = ctx.run(expand_cmd(ctx, "hub", SD14), cap, "expand")
    out = ctx.ckpt / "caltech-101" / "expansions" / "hub"
    written = len(list(out.rglob("*.png")))
    manifest = [json.loads(line) for p in out.glob("manifest_shard*.jsonl") for line in p.read_text().splitlines()]
    lost = sum(r["guidance"] != "guided" for r in manifest)
    rate = re.findall(r"([\d.]+) images/s", log)
    peak = re.findall(r"peak CUDA memory (\d+) MB", log)
    batch = re.findall(r"batch (\d+)", log)
    numbers = {"written": written, "lost_guidance": lost, "images_per_s": float(rate[-1]) if rate else None,
               "peak_mb": int(peak[-1]) if peak else None, "batch": int(batch[0]) if batch else None}
    assert written == 5 * ctx.limit and lost == 0, f"{written} of {5 * ctx.limit} images, {lost} without guidance"
    ctx.expanded = out
    return (f"{written} guided images by Hub id, batch {numbers['batch']}, {numbers['images_per_s']} images/s, "
            f"peak {numbers['peak_mb']} MB"), numbers


def reference_run(ctx, cap):
    """(model, name of a finished one-process fp32 expansion to compare with). The smoke's Hub-id
    model is already the tiny fp32 pipeline, expanded by step 6; on a GPU the tiny pipeline runs
    in fp32 once here (SD-1.4's shape in fp16 would compare rounding, not sharding)."""
    if ctx.cpu:
        requires("expanded")(ctx)
        return SD14, "hub"
    if not (ctx.ckpt / "caltech-101" / "expansions" / "single").is_dir():
        ctx.run(expand_cmd(ctx, "single", ctx.tiny, "--precision", "fp32"), cap, "single")
    return ctx.tiny, "single"


def step_torchrun(ctx, cap):
    requires("guide_ckpt", "tiny")(ctx)
    deadline = time.time() + cap
    model, reference = reference_run(ctx, cap / 2)
    log = ctx.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   *expand_cmd(ctx, "torchrun", model, "--precision", "fp32")[1:]], deadline - time.time(),
                  "torchrun")
    out = ctx.ckpt / "caltech-101" / "expansions"
    mean, worst = compare(out / "torchrun", out / reference)
    ranks = sorted(set(re.findall(r"shard (\d)/2 done", log)))
    assert ranks == ["0", "1"], f"shards that finished: {ranks}"
    assert worst <= 2, f"torchrun images differ from one process's by up to {worst} levels"
    peaks = re.findall(r"peak CUDA memory (\d+) MB on (cuda:\d)", log)
    return f"2 ranks, images within {worst} levels of one process; per-rank peaks {peaks or 'n/a (CPU)'}", \
        {"max_diff": worst, "mean_diff": mean, "rank_peaks": peaks}


def step_speedups(ctx, cap):
    requires("guide_ckpt", "tiny")(ctx)
    flags = ["--channels_last", "True"] + ([] if ctx.cpu else ["--compile", "True"])
    start = time.time()
    model, reference = reference_run(ctx, cap / 2)
    ctx.run(expand_cmd(ctx, "fast", model, "--precision", "fp32", *flags), start + cap - time.time(), "speedups")
    out = ctx.ckpt / "caltech-101" / "expansions"
    mean, worst = compare(out / "fast", out / reference)
    assert mean <= ctx.args.tolerance, f"mean |diff| {mean:.2f} levels over {ctx.args.tolerance}"
    return (f"{' '.join(flags)}: mean |diff| {mean:.2f}, max {worst} levels vs plain, {time.time() - start:.0f} s"
            + (" (compile not tried in the CPU smoke)" if ctx.cpu else "")), {"mean_diff": mean, "max_diff": worst}


STEPS = (  # (name, cap in seconds, function, takes the cap)
    ("versions", 30, step_versions, False),
    ("pipeline", 150, step_pipeline, False),
    ("guide", 120, step_guide, True),
    ("gradients", 90, step_gradients, False),
    ("memory", 120, step_memory, False),
    ("expand", 150, step_expand, True),
    ("torchrun", 120, step_torchrun, True),
    ("speed-ups", 120, step_speedups, True),
)


# ---------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------

def run_step(ctx, fn, cap, takes_cap):
    """(status, detail, numbers) of one step under an alarm at its cap."""
    def alarm(signum, frame):
        raise StepTimeout(f"ran past its cap of {cap:.0f} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(int(cap), 1))
    try:
        detail, numbers = fn(ctx, cap) if takes_cap else fn(ctx)
        return "PASS", detail, numbers
    except Skip as why:
        return "SKIP", str(why), {}
    except (AssertionError, StepTimeout) as err:
        return "FAIL", str(err) or type(err).__name__, {}
    except Exception as err:  # noqa: BLE001 - any error fails this step, never the others
        return "FAIL", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}", {}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main(argv=None):
    args = get_parser().parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    # Before anything imports huggingface_hub, which reads these once; its progress bars and the
    # libraries' info lines would bury the step lines.
    os.environ.update(HF_HOME=str(work / "hf"), HF_HUB_CACHE=str(work / "hf" / "hub"), HF_HUB_OFFLINE="1",
                      DISTDIFF_DATA_ROOT=str(work / "data"), HF_HUB_DISABLE_PROGRESS_BARS="1",
                      DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    ctx = Context(args, work)
    report = {"mode": "cpu_smoke" if args.cpu_smoke else "gpu", "budget_s": args.budget, "steps": [],
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.time()
    for name, cap, fn, takes_cap in STEPS:
        left = args.budget - (time.time() - start)
        step_start = time.time()
        if left < cap:
            status, detail, numbers = "SKIP", f"not started: {left:.0f} s of the budget left, cap {cap} s", {}
        elif ctx.device is None and name != "versions":
            status, detail, numbers = "SKIP", "no usable device (see versions)", {}
        else:
            status, detail, numbers = run_step(ctx, fn, cap, takes_cap)
        seconds = time.time() - step_start
        print(f"{status:4s}  {name} ({seconds:.0f} s, cap {cap} s): {detail}", flush=True)
        report["steps"].append({"name": name, "status": status, "seconds": round(seconds, 1), "cap_s": cap,
                                "detail": detail, "numbers": numbers})
    report["total_s"] = round(time.time() - start, 1)
    failed = [s["name"] for s in report["steps"] if s["status"] == "FAIL"]
    path = Path(args.report) if args.report else Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") \
        else work / "gpu_check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu_check: {len(report['steps']) - len(failed)} of {len(report['steps'])} steps did not fail"
          f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; {report['total_s']:.0f} s; report {path}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
