"""expand_distdiff.py's flags, each tagged with its role, and the key sets derived from the roles.

The roles say what a flag changes, and every list of keys elsewhere is derived from them:
  path       where inputs and outputs are (dataset, guide checkpoint, output dir, ...)
  sample     every image, guided or not (model, seed, schedule, framing, prompts, precision)
  guidance   the guided images only (mode, M, P, rho, radius, energy weights, prototypes)
  items      which items exist (--limit, --first_image_index)
  shard      which of them this process makes, or checks (--split, --verify, --prepare_only)
  execution  speed and memory only; images at most at float-rounding level (batch, device, ...)
  runtime    neither images nor items (GPU index, energy measurement, --allow_unguided)
  preset     a group of the above at once
The authors' second spellings are aliases of the same flags (their expand_diff.sh argument list
runs unchanged). `parse(argv)` gives the resolved ExpandConfig that distdiff.expansion.run takes.
"""
import dataclasses
from pathlib import Path

from distdiff import DistDiffError, registry
from distdiff.domains import COUNT, FINITE, GPU_INDEX, INDEX, Number, OneLineParser, OrAuto
from distdiff.config import EXPAND_SPELLINGS, dataset_section, parse_args, resolved_dict, spellings_of, str2bool
from distdiff.options import add_runtime_flags
from distdiff.presets import PRESETS, apply_targets, preset_values
from distdiff.prototype_store import PrototypeConfig
from distdiff.prototypes import CLUSTER_METHODS
from distdiff.registry import PROMPT_SETS
from distdiff.runs import default_guide_ckpt, expansion_dir
from distdiff.settings import (ENERGIES, FRAMINGS, GUIDANCE_MODES, GUIDE_INPUTS, START_RULES, TRANSFORM_POINTS,
                               TRANSFORM_STARTS, GuidanceConfig, SampleConfig)

ROLES = ("path", "sample", "guidance", "items", "shard", "execution", "runtime", "preset")
# Flags named differently from their GuidanceConfig field.
GUIDANCE_FLAGS = {"mode": "guidance", "repeats": "guidance_repeats", "interval": "guidance_interval"}
PROTOTYPE_FLAGS = {"path": "prototypes"}


def dataclass_defaults():
    """The defaults of the img2img, guidance and prototype settings, by flag name, read from their
    dataclasses' fields each time a parser is built (the one place they are written)."""
    return {renames.get(f.name, f.name): f.default
            for cls, renames in ((SampleConfig, {}), (GuidanceConfig, GUIDANCE_FLAGS), (PrototypeConfig, PROTOTYPE_FLAGS))
            for f in dataclasses.fields(cls)}


class Radius(Number):
    """--radius: a number >= 0, or none for no L-inf projection."""

    def __init__(self):
        super().__init__(float, 0)

    def describe(self):
        return "none or " + super().describe()

    def __call__(self, value):
        return None if str(value).strip().lower() == "none" else super().__call__(value)


class EnergyEvery(Number):
    """--record_energy: measure on every N-th item (1: all, 0: none); True/False mean 1/0."""

    def __init__(self):
        super().__init__(int, 0)

    def __call__(self, value):
        text = str(value).strip().lower()
        return {"true": 1, "false": 0}[text] if text in ("true", "false") else super().__call__(value)


def guidance_type(value):
    """transform | direct | none, also in the authors' spelling (transform_guidance, direct_guidance)."""
    return {"transform_guidance": "transform", "direct_guidance": "direct"}.get(value, value)


def get_parser(description=None):
    """expand_distdiff.py's parser; every flag carries its role (ROLES) as `action.role`."""
    p = OneLineParser(description=description)

    defaults = dataclass_defaults()

    def add(role, name, **kwargs):
        assert role in ROLES, role
        if name in defaults:  # the img2img, guidance and prototype defaults live in their dataclasses
            kwargs["default"] = defaults[name]
        p.add_argument(*spellings_of(name, EXPAND_SPELLINGS), **kwargs).role = role
    # Other spellings of a flag (the authors' generate_data.py names among them): EXPAND_SPELLINGS.
    # data, models, outputs
    add("path", "dataset", default=None, help=f"one of {', '.join(registry.dataset_names())}")
    add("sample", "model", default="CompVis/stable-diffusion-v1-4",
        help="Hugging Face Hub id (from the cache when offline) or local diffusers folder")
    add("path", "guide_ckpt", default=None,
        help="guide classifier (default: checkpoint/<dataset>/<guide_arch>_unpretrained_lr0.1/seed1/model_best.pth.tar)")
    add("path", "guide_arch", default="resnet50", help="arch of the default guide checkpoint path")
    add("path", "checkpoint_root", default="checkpoint", help="root for default paths")
    add("path", "exp", default=None, help="experiment name (default: distdiff_x<R>, sd_x<R> for --guidance none)")
    add("path", "out", default=None, help="output dir (default: checkpoint/<dataset>/expansions/<exp>)")
    add("path", "prototypes", default=None, help="prototypes file (default: <out>/prototypes.npz)")
    add("sample", "expand_ratio", type=COUNT, default=5,
        help="new images per source image")
    add("items", "first_image_index", type=INDEX, default=0,
        help="make copies k >= this only (the authors' manual resume; reruns resume by themselves here)")
    add("items", "limit", type=COUNT, default=None, help="expand only n source images (class-interleaved)")
    # img2img
    add("sample", "num_steps", type=COUNT, help="DDIM steps")
    add("sample", "strength", type=Number(float, 0, 1, low_open=True), help="img2img strength (denoising starts at step T*(1-s))")
    add("sample", "cfg_scale", type=FINITE,
        help="classifier-free guidance scale")
    add("sample", "resolution", type=Number(int, 8, multiple_of=8), help="sampling size (default: the model's native size)")
    add("sample", "framing", choices=FRAMINGS,
        help="source image to a square: shorter side + centre crop (default), + a random crop seeded per "
             "source (authors), or squash the whole image")
    add("sample", "shared_posterior", type=str2bool,
        help="one VAE posterior sample per source shared by its copies (authors), not one per copy")
    add("sample", "shared_prompt", type=str2bool,
        help="with --language_enhance: one sentence per source image, shared by its copies (authors), "
             "not one per copy")
    add("sample", "encode_precision", default="pipeline", choices=["pipeline", "fp32"],
        help="dtype of the VAE encoder and text encoder: the pipeline's (--precision), or fp32 with only the UNet "
             "and VAE decoder in --precision (authors: they encode before the fp16 cast)")
    add("sample", "start_rule", choices=START_RULES,
        help="first denoised step: T - int(T*s) (diffusers img2img) or int((1-s)*T) (authors); equal at s=0.5")
    add("sample", "offset_noise", type=str2bool, nargs="?", const=True,
        help="the authors' --offset_noise: add 0.1 N(0, 1) per item and latent channel to the img2img noise")
    add("sample", "prompts", default="project", choices=PROMPT_SETS,
        help="prompt templates: the project's (README) or the authors' (a full stop; '{} texture.' for DTD)")
    add("sample", "language_enhance", action="store_true",
        help="several prompts per class from --prompt_file, one drawn per image with the item's generator")
    add("sample", "prompt_file", default=None,
        help="JSON/YAML {class: [sentences]} for --language_enhance, or the authors' .pkl (unpickled: trusted "
             "files only) (default: data/<dataset>_le.json)")
    # distribution-aware guidance
    add("guidance", "guidance", type=guidance_type, choices=GUIDANCE_MODES,
        help="transform | direct (the authors' variants) | none (plain SD img2img)")
    add("guidance", "guidance_step", type=COUNT, help="M: guidance starts at timesteps[T-M]")
    add("guidance", "lookahead_steps", type=COUNT,
        help="P: look-ahead DDIM steps (transform) or guided steps (direct)")
    add("guidance", "step_size", type=FINITE, help="rho: gradient step size")
    add("guidance", "radius", type=Radius(),
        help="transform: L-inf projection radius, or 'none'")
    add("guidance", "lambda_class", type=FINITE, help="weight of the class prototype term")
    add("guidance", "lambda_group", type=FINITE, help="weight of the group prototype term")
    add("guidance", "optimize_targets", default=None,
        help="the authors' term switch: global_prototype (class), local_prototype (group) or both joined "
             "by '-'; a term it leaves out gets weight 0")
    add("guidance", "normalize_features", type=str2bool,
        help="L2-normalise guide features before the energy")
    add("guidance", "renormalize_prototypes", type=str2bool,
        help="rescale class and group prototypes (means of unit features) to unit norm, as the authors do")
    add("guidance", "guide_precision", default="fp32", choices=["fp32", "pipeline"],
        help="dtype of the guide during guidance: fp32, or the pipeline's (--precision; authors: fp16 on CUDA). "
             "Prototype features are always computed in fp32")
    add("guidance", "guide_input", default="guide", choices=GUIDE_INPUTS,
        help="decoded image to guide input: the guide's own test transform, or the authors' raw bicubic resize "
             "(and their squash for the prototype features)")
    add("guidance", "guidance_repeats", type=COUNT, help="transform: number of applications")
    add("guidance", "guidance_interval", type=COUNT, help="transform: steps between applications")
    add("guidance", "transform_start", choices=TRANSFORM_STARTS,
        help="transform: start (a, b) at the random draws (the paper), or at (0, 0) so that only the gradient "
             "step moves the latent (with --step_size 0: the random perturbation alone)")
    add("guidance", "transform_point", choices=TRANSFORM_POINTS,
        help="transform: the paper's gradient step on (a, b) taken at the unclamped point, or 'landed': the "
             "perturbation as an offset clamped first, then --guidance_iters normalised steps of --offset_step radii "
             "taken where it lands (variants V1/V2 of docs/guidance_variants.md; not the paper's method)")
    add("guidance", "guidance_iters", type=Number(int, 0),
        help="with --transform_point landed: the number of normalised steps on the offset (0: the clamped noise alone)")
    add("guidance", "offset_step", type=Number(float, 0),
        help="with --transform_point landed: each step's L-inf size in radii (0: the clamped noise alone)")
    add("guidance", "energy", choices=ENERGIES,
        help="what the guidance lowers: the paper's prototype energy, or the guide's cross-entropy for the source's "
             "class (a classifier-guidance reference, docs/guidance_variants.md)")
    add("runtime", "record_energy", type=EnergyEvery(), default=8, metavar="N",
        help="measure the energy with and without guidance on every N-th item of the work list (1: all, 0 or "
             "False: none); the measurement repeats the look-ahead twice without gradients on those items, so doing "
             "it on every item nearly doubles the guidance's cost; it never changes an image")
    add("guidance", "cluster", choices=CLUSTER_METHODS, help="group prototype clustering")
    add("guidance", "num_groups", type=COUNT, help="K group prototypes per class")
    add("preset", "preset", default=None, choices=sorted(PRESETS),
        help="set a group of flags at once (flags on the command line still win): authors = the authors' "
             "algorithm, see README")
    # execution
    add("shard", "split", type=INDEX, default=None, help="this shard's id")
    add("shard", "total_split", type=COUNT, default=None, help="number of shards")
    add("execution", "batch_size", type=OrAuto(int, 1), default="auto",
        help="items sampled together: a number, or auto (CUDA: the largest batch that fits the free memory by the "
             "per-image model of distdiff/memory.py, with gradient checkpointing only where one image does not fit "
             "without it; CPU: 8). An out-of-memory error halves it and retries; it never locks an output dir")
    add("runtime", "gpu", default=None, type=GPU_INDEX, help="GPU index (the authors' launcher argument)")
    add("execution", "gradient_checkpointing", action="store_true",
        help="recompute UNet and VAE-decoder activations in the guidance backward instead of storing them: "
             "less memory, more time (diffusers checkpoints whenever gradients are on)")
    add("execution", "channels_last", type=str2bool, default=False,
        help="NHWC memory format for the UNet and VAE (see docs/performance.md)")
    add("execution", "compile", type=str2bool, default=False,
        help="torch.compile the UNet and VAE decoder (CUDA; compile time dominates short CPU runs)")
    add("runtime", "allow_unguided", action="store_true",
        help="keep going when guidance is lost (non-finite or all-zero gradients) for more than 1 %% of a batch's "
             "items; such items are kept unguided and marked in the manifest. Without it the run stops")
    add("shard", "prepare_only", action="store_true", help="build prototypes, then exit")
    add("shard", "verify", action="store_true", help="report missing images and the shards to rerun")
    add_runtime_flags(p, seed=42, seed_help="base seed; item (i, k) uses a generator seeded by (seed, i, k)",
                      precision_help="pipeline dtype: auto = fp16 on CUDA (the authors' choice), fp32 on the CPU; "
                                     "the guidance's own variables and update are fp32 and its backward is loss-scaled",
                      precision_default="auto")
    for action in p._actions:
        action.role = {"device": "execution", "threads": "execution", "precision": "sample", "seed": "sample",
                       "help": None}.get(action.dest, getattr(action, "role", None))
    return p


def keys(*roles):
    """The flag names (dests) of the given roles, sorted."""
    return sorted(a.dest for a in get_parser()._actions if getattr(a, "role", None) in roles)


def spellings(names):
    """Every command-line spelling of the named flags, as names with underscores."""
    return sorted({s.lstrip("-").replace("-", "_") for a in get_parser()._actions if a.dest in names
                   for s in a.option_strings if s.startswith("--")})


# Settings that change the images: one output dir is produced with one set of them.
# class_prompts: the words a folder tree's dataset.yaml gives its classes change the images too;
# val_split_resolved: which images are sources, and so each item's position and its random draws.
GENERATION_KEYS = tuple(["dataset", "guide_ckpt", "class_prompts", "val_split_resolved"] + keys("sample", "guidance"))


@dataclasses.dataclass
class ExpandConfig:
    """One expansion shard, resolved: what it makes (sample, guidance, prototypes), from what and
    to where, which items, and how it runs. No defaults here: they are the flags' (above) and the
    dataclasses' they come from. `settings` is what args.yaml records (by flag name), `argv` the
    command line that a missing shard's command repeats."""
    dataset: str
    model: str
    guide_ckpt: str
    out: Path
    sample: SampleConfig
    guidance: GuidanceConfig
    prototypes: PrototypeConfig
    expand_ratio: int
    limit: int | None
    first_image_index: int
    split: int | None
    total_split: int | None
    seed: int
    prompts: str
    prompt_file: str | None  # with --language_enhance only
    guide_input: str
    guide_precision: str
    encode_precision: str
    device: str
    gpu: str | None
    precision: str
    threads: int
    batch_size: int | str
    gradient_checkpointing: bool
    channels_last: bool
    compile: bool
    record_energy: int
    allow_unguided: bool
    prepare_only: bool
    verify: bool
    settings: dict
    argv: list
    notes: list  # what legal but unusual values mean (unusual_settings), logged by the run


def resolve_paths(args):
    """Fill in the default guide checkpoint, experiment name, output dir and prototypes path."""
    if args.guide_ckpt is None:
        # With a preset, the preset's guide (train_original.py --preset), in its own run dir.
        args.guide_ckpt = str(default_guide_ckpt(args.checkpoint_root, args.dataset, args.guide_arch, preset=args.preset))
    if args.exp is None:
        name = {"transform": "distdiff", "none": "sd"}.get(args.guidance, args.guidance)
        args.exp = f"{name}_x{args.expand_ratio}"
    if args.out is None:
        args.out = str(expansion_dir(args.checkpoint_root, args.dataset, args.exp))
    if args.prototypes is None:
        args.prototypes = str(Path(args.out) / "prototypes.npz")
    return args


def guidance_config(args):
    """GuidanceConfig from the flags (its fields are flag names, or GUIDANCE_FLAGS' names)."""
    fields = {f.name: getattr(args, GUIDANCE_FLAGS.get(f.name, f.name)) for f in dataclasses.fields(GuidanceConfig)}
    fields["lambda_class"], fields["lambda_group"] = apply_targets(args.optimize_targets, args.lambda_class,
                                                                   args.lambda_group)
    return GuidanceConfig(**fields)


def sample_config(args):
    """SampleConfig from the flags (its fields are flag names)."""
    return SampleConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)})


def parse_namespace(argv=None, description=None):
    """The resolved flags: defaults < configs/<dataset>.yaml (expand) < --preset < command line."""
    args = parse_args(get_parser(description), argv, config=dataset_section("expand"),
                      overlay=lambda s: preset_values(s.preset, s.guidance))
    if not args.dataset:
        raise DistDiffError("a dataset is required (--dataset)")
    if args.first_image_index >= args.expand_ratio:  # every copy skipped: a run that writes nothing
        raise DistDiffError(f"--first_image_index {args.first_image_index} leaves no copy to make: it must be below "
                            f"--expand_ratio {args.expand_ratio}")
    if args.transform_point == "landed" and (args.guidance != "transform" or args.radius is None):
        raise DistDiffError("--transform_point landed needs --guidance transform and a --radius (its steps are "
                            "sized in radii)")
    if args.language_enhance and args.prompt_file is None:
        args.prompt_file = str(registry.DATA_ROOT / f"{args.dataset}_le.json")
    return resolve_paths(args)


def config_from_args(args, argv):
    """The ExpandConfig of resolved flags (parse_namespace), its guidance schedule checked against
    its denoised steps (one line before any heavy work) and its unusual values noted."""
    direct = {f.name for f in dataclasses.fields(ExpandConfig)} - {"out", "sample", "guidance", "prototypes",
                                                                    "prompt_file", "settings", "argv", "notes"}
    cfg = ExpandConfig(**{name: getattr(args, name) for name in direct}, out=Path(args.out),
                       sample=sample_config(args), guidance=guidance_config(args),
                       prototypes=PrototypeConfig(**{f.name: getattr(args, PROTOTYPE_FLAGS.get(f.name, f.name))
                                                     for f in dataclasses.fields(PrototypeConfig)}),
                       prompt_file=args.prompt_file if args.language_enhance else None,
                       settings=resolved_dict(args), argv=list(argv), notes=[])
    cfg.guidance.schedule(cfg.sample.num_steps, cfg.sample.start)
    cfg.notes = unusual_settings(cfg)
    return cfg


def parse(argv, description=None):
    """expand_distdiff.py's command line (a list) as an ExpandConfig."""
    return config_from_args(parse_namespace(argv, description), argv)


def unusual_settings(cfg):
    """What legal but unusual values mean, one line each (the run logs them and goes on)."""
    notes, g = [], cfg.guidance
    if cfg.sample.cfg_scale < 1:
        notes.append(f"--cfg_scale {cfg.sample.cfg_scale:g} < 1 weakens the prompt (0: unconditional; negative: "
                     "away from the prompt)")
    if g.mode != "none":
        if g.step_size == 0:
            notes.append("--step_size 0: no gradient step; transform keeps its random perturbation and projection "
                         "(the noise control), direct is plain DDIM")
        elif g.step_size < 0:
            notes.append(f"--step_size {g.step_size:g} < 0 raises the energy (away from the prototypes)")
        if g.lambda_class < 0 or g.lambda_group < 0:
            notes.append("a negative --lambda_class/--lambda_group pushes away from that prototype")
        if g.lambda_class == 0 and g.lambda_group == 0:
            notes.append("--lambda_class and --lambda_group are both 0: the energy is constant and every gradient "
                         "is zero (guidance lost for every item)")
        if g.transform_point == "unclamped" and (g.guidance_iters, g.offset_step) != (GuidanceConfig.guidance_iters,
                                                                                   GuidanceConfig.offset_step):
            notes.append("--guidance_iters and --offset_step act only with --transform_point landed")
        if g.transform_point == "landed":
            notes.append("--transform_point landed: each step is --offset_step radii; --step_size (rho) is not used")
        if g.mode == "transform" and g.radius == 0:
            notes.append("--radius 0: the projection returns the unguided latent, so guidance changes nothing")
    return notes
