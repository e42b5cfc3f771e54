"""The acceptance run for a new GPU machine, in at most 8 minutes (scripts/gpu_check.sh).

    bash scripts/gpu_check.sh                       # on the GPU machine; report in $OUT or the work dir
    bash scripts/gpu_check.sh --with_compile        # also --compile in the speed-ups step (about 1 minute more)
    bash scripts/gpu_check.sh --cpu_smoke           # the same steps with tiny shapes on the CPU (the tests run it)

Each step prints PASS, FAIL or SKIP as it finishes, runs under its own time cap (and within the
total budget), and a failing step never hides the others; one JSON report holds every step's
numbers (`$OUT/gpu_check.json` when OUT is set, else `<workdir>/gpu_check.json`; the temporary
work dir's report is kept beside it as `<workdir>.json`, since the dir is removed). Offline:
stand-ins with the real shapes replace every download.

Exit status: 0 only when every step passed; 1 when any step failed; 2 when none failed but some
were skipped (a cap that no longer fit the budget, or an earlier step's result missing), so a run
cannot pass by skipping. The last line names the failed and the skipped steps.

Every step after the first starts from a clean GPU: the in-process pipeline of steps 3-5 is freed
before the steps that start their own processes (expand, torchrun, speed-ups), the allocator
cache is emptied, and each step's line and report entry give the GPU memory free at its start.

Steps, with the time each should take on one H100 (from counted FLOPs, docs/performance.md: a
CFG UNet call is 1.6 TFLOP, a 512-px decode 2.5, the look-ahead's forward and backward 17, a guided
image 60; assuming 300 TFLOP/s sustained in fp16 and 60 in fp32, plus measured CPU-side costs):
 1 versions     torch, CUDA build, driver, the GPUs; FAIL when a GPU is listed but torch cannot use it (~2 s)
 2 guide        stand-in Caltech-101 prepared, ResNet-50 guide trained 2 epochs on CUDA; training
                images/s (~40 s, mostly process start-up)
 3 pipeline     SD-1.4's shape (random weights) saved in fp16 in SD-1.4's file layout (a tokenizer
                of vocab.json + merges.txt without tokenizer.json, the safety checker's config
                without weights, its model_index.json and scheduler config) into a temporary
                Hugging Face cache as CompVis/stable-diffusion-v1-4, loaded through the real Hub-id
                path; dtype, device and the DDIM scheduler asserted (~40 s: 1.07 B parameters
                initialised, 2.1 GB written and read)
 4 gradients    the guidance gradient on (a, b) at SD-1.4 shape: fp16 loss-scaled and the authors' unscaled
                fp16 against fp32 (cosine, norm ratio, zero and non-finite counts) (~20 s: 3 x 17 TFLOP)
 5 memory       the ladder --batch_size auto relies on: measured peak vs predicted per image, plain and
                with checkpointing, at batch 1, 2 and the planned batch; out-of-memory recovery: twice
                the planned batch must be halved until it fits, and 4 images whose guidance meets an
                injected out-of-memory error at batch 4 must equal those of a plain run at the halved
                batch (~50 s)
 6 expand       expand_distdiff.py by Hub id at SD-1.4 shape, 2 sources x 5 copies, all defaults
                (batch auto, fp16) on the freed GPU; images/s and peak memory (~60 s: 10 x 60 TFLOP
                plus loading)
 7 torchrun     2 processes (one per GPU, or sharing one) give the images of one process; each rank's
                device from its log, distinct GPUs where there are 2 or more (~40 s)
 8 speed-ups    --channels_last, and with --with_compile also --compile, gives the same images
                (~30 s; ~90 s with compile)
Predicted total: about 5 minutes (6 with --with_compile); the caps add up to more, and the
8-minute budget cuts the last steps short (SKIP, exit 2) rather than overrun: a step starts
only with its cap's time left.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import gc
import json
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

from distdiff.domains import NON_NEGATIVE, Number, OneLineParser
from distdiff.options import run_cli

REPO = Path(__file__).resolve().parent.parent
SD14 = "CompVis/stable-diffusion-v1-4"
CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes")
KEPT = ("Faces", "Leopards", "airplanes")


class StepTimeout(Exception):
    """A step ran past its cap."""


class Skip(Exception):
    """A step that cannot run here (says why)."""


def get_parser():
    parser = OneLineParser(description=__doc__)
    add = parser.add_argument
    add("--cpu_smoke", "--cpu-smoke", action="store_true",
        help="tiny shapes on the CPU: the same steps, to keep this script working (the test suite runs it)")
    add("--budget", type=Number(float, 0, low_open=True), default=480.0, help="seconds for all steps together")
    add("--cap_scale", "--cap-scale", type=Number(float, 1), default=1.0,
        help="multiply every step's cap and the budget by this: a machine shared with other work (the test suite "
             "runs the CPU smoke beside its other background jobs with 5), where wall time says nothing")
    add("--workdir", default=None, help="stand-ins and outputs (default: a temporary dir, removed afterwards)")
    add("--report", default=None, help="JSON report path (default: $OUT/gpu_check.json, else <workdir>/gpu_check.json, "
                                       "or <workdir>.json for the temporary work dir, which is removed)")
    add("--tolerance", type=NON_NEGATIVE, default=3.0,
        help="largest mean |difference| in 8-bit levels between runs that must give the same images")
    add("--with_compile", "--with-compile", action="store_true",
        help="also check --compile in the speed-ups step (off by default: compiling costs about a minute)")
    return parser


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

class Context:
    """What the steps share: paths, device, the loaded pipeline, the earlier steps' results."""

    def __init__(self, args, work):
        self.args, self.work, self.cpu = args, work, args.cpu_smoke
        self.hf_cache = work / "hf" / "hub"
        # TMPDIR: the steps' temporary files (torchrun's rendezvous folders among them) stay in the work dir.
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, DISTDIFF_DATA_ROOT=str(work / "data"), HF_HOME=str(work / "hf"),
                        HF_HUB_CACHE=str(self.hf_cache), HF_HUB_OFFLINE="1", TMPDIR=str(work / "tmp"),
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.ckpt = work / "checkpoint"
        self.device, self.dtype, self.pipe, self.hub_model, self.guide_ckpt, self.tiny, self.expanded = (None,) * 7
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

    def clean_gpu(self, keep_pipe):
        """Free what the last step left: the pipeline too unless this step uses it (a step that starts
        its own processes must find the GPU as empty as a user's run would), then the allocator cache."""
        if not keep_pipe:
            self.pipe = None
        gc.collect()
        if self.device is not None and self.device.type == "cuda":
            import torch
            torch.cuda.empty_cache()

    def gpu_memory(self):
        """{free_gib, total_gib, held_here_gib} of the GPU now; None where it is not measured (CPU)."""
        if self.device is None or self.device.type != "cuda":
            return None
        import torch
        free, total = torch.cuda.mem_get_info(self.device)
        return {"free_gib": round(free / 2 ** 30, 2), "total_gib": round(total / 2 ** 30, 2),
                "held_here_gib": round(torch.cuda.memory_reserved(self.device) / 2 ** 30, 2)}


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


def halved(start, final):
    """True when a batch of `start` ran as `final` after one or more halvings (start // 2**k, k >= 1)."""
    return any(start >> k == final for k in range(1, start.bit_length()))


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
    from embedded.sd_shapes import SD14_FILES, save_rehearsal_pipeline, save_shape_pipeline

    prompts = [f"a photo of a {c}" for c in KEPT]
    start = time.time()
    snapshot = hf_snapshot(SD14, ctx.hf_cache)
    if ctx.cpu:
        save_rehearsal_pipeline(snapshot, prompts)
    else:
        save_shape_pipeline("sd14", snapshot, prompts, dtype=torch.float16)
    saved = time.time() - start
    layout = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert layout == sorted(SD14_FILES), f"the snapshot is not in SD-1.4's file layout: {layout}"
    ctx.tiny = save_rehearsal_pipeline(ctx.work / "tiny_pipeline", prompts)  # steps 7 and 8
    start = time.time()
    pipe = load_pipeline(SD14, ctx.device, ctx.dtype)  # the real Hub-id path, from the temporary cache
    loaded = time.time() - start
    assert pipe.unet.dtype == ctx.dtype and pipe.vae.dtype == ctx.dtype, f"dtype {pipe.unet.dtype}, asked {ctx.dtype}"
    assert pipe.unet.device.type == ctx.device.type, f"UNet on {pipe.unet.device}"
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not config.clip_sample and config.steps_offset == 1
    assert pipe.safety_checker is None and type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    ctx.pipe, ctx.hub_model = pipe, SD14
    params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    return (f"{params / 1e6:,.1f} M parameters, {ctx.dtype}, {ctx.device}, DDIM (clip_sample False, steps_offset 1); "
            f"SD-1.4's file layout (vocab/merges tokenizer, safety checker config without weights); "
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
    from distdiff.sampler import GuidedSampler
    from distdiff.settings import GuidanceConfig, SampleConfig
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

    from distdiff.numerics import scaled_grad
    from distdiff.settings import GUIDED, NONFINITE, ZERO_GRADIENT

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
    from distdiff.generation import BatchSize
    from distdiff.numerics import scaled_grad

    requires("pipe")(ctx)
    pipe = ctx.pipe
    sampler, _, _, _ = guidance_fixture(ctx, pipe, batch=1)
    predicted = memory.pipeline_image_memory(pipe, sampler.guide, sampler.guide_input.image_size, sampler.resolution,
                                            sampler.guidance_cfg.lookahead_steps)
    del sampler
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
    numbers["worst_measured_over_predicted"] = worst
    ladder = ", ".join(f"{'ckpt' if r['checkpointing'] else 'plain'} b{r['batch']}: "
                       + (f"{r['measured_gib_per_image']:.2f}/{r['predicted_gib_per_image']:.2f}"
                          if r["measured_gib_per_image"] is not None else f"-/{r['predicted_gib_per_image']:.2f}")
                       for r in numbers["ladder"])
    detail = f"GiB per image measured/predicted: {ladder}" + ("" if cuda else " (CPU: peaks not measured)")
    assert worst <= 1.1, f"the model under-predicts (worst measured/predicted {worst:.2f}): {detail}"
    if cuda:  # a real out-of-memory error: twice the planned plain batch must be halved until it fits
        start_batch = 2 * max(memory.largest_batch(free, predicted.plain), 1)
        sizes = BatchSize(start_batch)
        sizes.run(lambda piece: guidance_pass(len(piece)), list(range(start_batch)))
        numbers.update(oom_start_batch=start_batch, oom_final_batch=sizes.size)
        assert halved(start_batch, sizes.size), (f"batch {start_batch}, twice the planned one, ran as {sizes.size} "
                                                 f"without being halved: the memory model over-predicts ({detail})")
        detail += f"; out of memory: batch {start_batch} halved to {sizes.size}"
    else:
        detail += "; a real out-of-memory error is not provoked on the CPU"
    injected = injected_oom_images(ctx, pipe)
    numbers["injected_oom"] = injected
    same = "identical to" if injected["max_diff"] == 0 else f"within {injected['max_diff']} levels of"
    detail += (f"; injected out-of-memory error: batch {injected['start_batch']} halved to {injected['final_batch']}, "
               f"images {same} a plain run at batch {injected['final_batch']}")
    return detail, numbers


def injected_oom_images(ctx, pipe, items=4, fits=2):
    """Sample `items` images through BatchSize(items).run, with an out-of-memory error raised from the
    guidance of any piece larger than `fits` (mid-sampling, where a real one strikes), and compare
    them with a plain run at the batch it fell back to: the retry must redo the failed piece whole.
    Each run has a sampler of its own, as each expand_distdiff.py process has."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    from distdiff.generation import BatchSize
    from distdiff.sampler import draw_item

    def out_of_memory():
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by gpu_check)")
    assert should_reduce_batch_size(out_of_memory()), "accelerate does not take the injected error for out-of-memory"
    sampler = guidance_fixture(ctx, pipe)[0]
    shape = sampler.latent_shape()
    generator = torch.Generator().manual_seed(2)
    posterior_mean = torch.randn(items, *shape, generator=generator)
    posterior_std = torch.full_like(posterior_mean, 0.1)
    labels = torch.arange(items) % len(KEPT)
    injected = []

    def fail_large_guidance(module, args):  # classifier-free guidance doubles the UNet's batch
        if torch.is_grad_enabled() and args[0].shape[0] > 2 * fits:
            injected.append(args[0].shape[0] // 2)
            raise out_of_memory()

    def sampling(sampler):
        def sample(piece):  # every item draws from its own generator, as in an expansion
            draws = [draw_item(torch.Generator().manual_seed(1000 + i), shape, sampler.guidance_cfg.repeats, 1, False)
                     for i in piece]
            mean, std = (x[piece].to(ctx.device, sampler.dtype) for x in (posterior_mean, posterior_std))
            images, _ = sampler.sample(mean, std, labels[piece], draws)
            return ((images.float().clamp(-1, 1) + 1) * 127.5).round().cpu()  # 8-bit levels
        return sample

    hook = pipe.unet.register_forward_pre_hook(fail_large_guidance)
    try:
        sizes = BatchSize(items)
        recovered = torch.cat(sizes.run(sampling(sampler), list(range(items))))
    finally:
        hook.remove()
    fresh = guidance_fixture(ctx, pipe)[0]
    plain = torch.cat(BatchSize(sizes.size).run(sampling(fresh), list(range(items))))
    diff = (recovered - plain).abs()
    result = {"start_batch": items, "final_batch": sizes.size, "injected_at": injected,
              "mean_diff": float(diff.mean()), "max_diff": int(diff.max())}
    assert injected, f"the injected out-of-memory error never fired: {result}"
    assert halved(items, sizes.size) and sizes.size <= fits, f"batch {items} was not halved to {fits}: {result}"
    if ctx.device.type == "cpu":  # the same pieces on deterministic kernels: bit for bit
        assert result["max_diff"] == 0, f"the images after the out-of-memory retry differ: {result}"
    else:  # attention backward kernels may sum in another order
        assert result["mean_diff"] <= ctx.args.tolerance, f"the images after the retry differ: {result}"
    return result


def step_expand(ctx, cap):
    requires("guide_ckpt", "hub_model")(ctx)
    log = ctx.run(expand_cmd(ctx, "hub", ctx.hub_model), cap, "expand")
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
    return (f"{written} guided images by Hub id, batch {numbers['batch']} (auto), {numbers['images_per_s']} images/s, "
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


def rank_devices(log):
    """{rank: CUDA index} from the ranks' `device cuda:<i> (<name>), LOCAL_RANK <r>` lines
    (distdiff.devices.resolve_device), else from their `shard <r>/2 on cuda:<i>` lines; and which."""
    lines = re.findall(r"device cuda:(\d+) \((.+?)\), LOCAL_RANK (\d+)", log)
    if lines:
        return {int(rank): int(index) for index, _, rank in lines}, "device lines"
    shards = re.findall(r"shard (\d+)/2 on cuda:(\d+)", log)
    return {int(rank): int(index) for rank, index in shards}, "shard lines (no rank logged a `device cuda:` line)"


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
    numbers = {"max_diff": worst, "mean_diff": mean, "rank_peaks": peaks}
    if ctx.cpu:
        devices = "devices not checked (CPU smoke)"
    else:
        import torch

        found, source = rank_devices(log)
        assert sorted(found) == [0, 1], f"the ranks' devices are not in the torchrun output (found {found})"
        numbers["rank_devices"] = found
        if torch.cuda.device_count() >= 2:
            assert found[0] != found[1], f"both ranks ran on cuda:{found[0]} with {torch.cuda.device_count()} GPUs"
            devices = f"rank 0 on cuda:{found[0]}, rank 1 on cuda:{found[1]} (from their {source})"
        else:
            assert found == {0: 0, 1: 0}, f"one GPU, yet the ranks' devices are {found}"
            devices = f"one GPU: both ranks shared cuda:0 (from their {source})"
    return (f"2 ranks, images within {worst} levels of one process; {devices}; "
            f"per-rank peaks {peaks or 'n/a (CPU)'}"), numbers


def step_speedups(ctx, cap):
    requires("guide_ckpt", "tiny")(ctx)
    flags = ["--channels_last", "True"] + (["--compile", "True"] if ctx.args.with_compile else [])
    start = time.time()
    model, reference = reference_run(ctx, cap / 2)
    ctx.run(expand_cmd(ctx, "fast", model, "--precision", "fp32", *flags), start + cap - time.time(), "speedups")
    out = ctx.ckpt / "caltech-101" / "expansions"
    mean, worst = compare(out / "fast", out / reference)
    assert mean <= ctx.args.tolerance, f"mean |diff| {mean:.2f} levels over {ctx.args.tolerance}"
    return (f"{' '.join(flags)}: mean |diff| {mean:.2f}, max {worst} levels vs plain, {time.time() - start:.0f} s"
            + ("" if ctx.args.with_compile else " (compile not tried: --with_compile)")), \
        {"flags": flags, "mean_diff": mean, "max_diff": worst}


class Step(NamedTuple):
    """One step of the run."""
    name: str
    cap: int              # seconds
    run: Callable
    takes_cap: bool       # run(ctx, cap) rather than run(ctx)
    uses_pipe: bool       # works on the in-process pipeline; every other step starts with it freed


STEPS = (  # the guide trains first, so that only steps 3-5 share the GPU with the loaded pipeline
    Step("versions", 30, step_versions, False, False),
    Step("guide", 120, step_guide, True, False),
    Step("pipeline", 150, step_pipeline, False, True),
    Step("gradients", 90, step_gradients, False, True),
    Step("memory", 120, step_memory, False, True),
    Step("expand", 150, step_expand, True, False),
    Step("torchrun", 120, step_torchrun, True, False),
    Step("speed-ups", 120, step_speedups, True, False),
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
    report = {"mode": "cpu_smoke" if args.cpu_smoke else "gpu", "budget_s": args.budget * args.cap_scale, "steps": [],
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.time()
    for step in STEPS:
        left = args.budget * args.cap_scale - (time.time() - start)
        step_start, memory, cap = time.time(), None, step.cap * args.cap_scale
        if left < cap:
            status, detail, numbers = "SKIP", f"not started: {left:.0f} s of the budget left, cap {cap:.0f} s", {}
        elif ctx.device is None and step.name != "versions":
            status, detail, numbers = "SKIP", "no usable device (see versions)", {}
        else:
            if step.name != "versions":
                memory = start_clean(ctx, step)
            status, detail, numbers = run_step(ctx, step.run, cap, step.takes_cap)
        seconds = time.time() - step_start
        if isinstance(memory, dict):  # the GPU at the step's start
            at_start = f"; {memory['free_gib']:.1f} of {memory['total_gib']:.1f} GiB free"
        else:
            at_start = "" if memory is None else "; GPU memory not measured"
        print(f"{status:4s}  {step.name} ({seconds:.0f} s, cap {cap:.0f} s{at_start}): {detail}", flush=True)
        report["steps"].append({"name": step.name, "status": status, "seconds": round(seconds, 1), "cap_s": cap,
                                "gpu_memory_at_start": memory, "detail": detail, "numbers": numbers})
    report["total_s"] = round(time.time() - start, 1)
    code, summary = verdict(report["steps"])
    report.update(exit_code=code, summary=summary)
    path = Path(args.report) if args.report else Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") \
        else work / "gpu_check.json" if args.workdir else work.parent / f"{work.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"gpu_check: {summary}; {report['total_s']:.0f} s; report {path}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return code


def start_clean(ctx, step):
    """Free the GPU for `step` and return its memory at the start (or why it is not measured)."""
    try:
        ctx.clean_gpu(keep_pipe=step.uses_pipe)
        return ctx.gpu_memory() or "not measured (CPU smoke)"
    except Exception as err:  # noqa: BLE001 - a broken CUDA context fails the step itself, not the run
        return f"not measured ({type(err).__name__}: {' '.join(str(err).split())[:200]})"


def verdict(steps):
    """(exit status, summary): 0 when every step passed, 1 when any failed, 2 when none failed but
    some were skipped; the summary names the failed and the skipped steps."""
    named = {status: [s["name"] for s in steps if s["status"] == status] for status in ("PASS", "FAIL", "SKIP")}
    code = 1 if named["FAIL"] else 2 if named["SKIP"] else 0
    words = {0: "PASS", 1: "FAIL", 2: "INCOMPLETE"}[code]
    parts = [f"{words} (exit {code}): {len(named['PASS'])} of {len(steps)} steps passed"]
    parts += [f"{label}: {', '.join(named[status])}" for status, label in (("FAIL", "failed"), ("SKIP", "skipped"))
              if named[status]]
    return code, "; ".join(parts)


if __name__ == "__main__":
    run_cli(main)
