"""Command-line plumbing shared by the scripts: common flags, the training flags, run_cli.

The scripts own their parsers; this module only declares flags that more than one script
exposes, so that they cannot drift apart. Defaults are the paper's (ResNet-50 from scratch, SGD
lr 0.1, 100 epochs, batch 64); configs/<dataset>.yaml overrides them per dataset, and the
command line overrides both (distdiff.config.parse_args).
"""
import dataclasses
import sys

from distdiff import DistDiffError
from distdiff.config import PRECISIONS, TRAIN_SPELLINGS, add_positional_twins, spellings_of, str2bool
from distdiff.domains import COUNT, DEGREES, DEVICE, GPU_INDEX, INDEX, NON_NEGATIVE, RATE, TEXT, Number, OrAuto, with_domain
from distdiff.presets import TRAIN_PRESETS


def _help(text):
    """argparse %-formats help strings; literal percent signs must be doubled."""
    return text.replace("%", "%%")


def flag_adder(parser, table=None, defaults=None):
    """add(name, **kwargs): parser.add_argument with every spelling of `name` (config.spellings_of)
    and, for a name in `defaults` (a dataclass's fields), that default: each is written once."""
    def add(name, **kwargs):
        if defaults and name in defaults:
            kwargs["default"] = defaults[name]
        return parser.add_argument(*spellings_of(name, table or {}), **with_domain(kwargs))
    return add


def train_defaults():
    """TrainConfig's defaults (the paper's recipe), by field name."""
    from distdiff.recipe import TrainConfig
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def add_threads_flag(parser, default=0, help="torch CPU threads (0 = torch's default)"):
    """--threads alone, for scripts whose only torch work runs on the CPU."""
    parser.add_argument("--threads", **with_domain(dict(type=INDEX, default=default, help=_help(help))))
    return parser


def add_runtime_flags(parser, seed=None, seed_help="random seed", precision_help=None, threads=0,
                      precision_default="fp32"):
    """--device, --threads and, when given defaults/help, --seed and --precision ('auto' among the
    choices when it is the default: fp16 on CUDA, fp32 on the CPU)."""
    add = flag_adder(parser)
    add("device", default="auto", type=DEVICE,
        help="auto: the GPU when there is one; the CPU only where no GPU exists")
    add_threads_flag(parser, threads)
    if precision_help:
        choices = PRECISIONS + (("auto",) if precision_default == "auto" else ())
        add("precision", default=precision_default, choices=choices, help=_help(precision_help))
    if seed is not None:
        add("seed", type=INDEX, default=seed, help=_help(seed_help))
    return parser


TRAIN_PRECISIONS = ("auto",) + PRECISIONS


def train_precision(value):
    """--precision / --amp: auto, fp32, fp16 or bf16; off means fp32 and on means auto."""
    return {"off": "fp32", "on": "auto"}.get(str(value).strip().lower(), str(value).strip().lower())


def auto_or_bool(value):
    """auto, or a True/False the way str2bool reads it."""
    return "auto" if str(value).strip().lower() == "auto" else str2bool(value)


# Positional forms from the seed README: `train_original.py caltech-101 resnet50 0.1 False 0`.
TRAIN_POSITIONALS = [("dataset", TEXT), ("arch", TEXT), ("lr", RATE), ("pretrained", str2bool), ("gpu", GPU_INDEX)]


def add_train_flags(parser, positionals=TRAIN_POSITIONALS):
    """Flags of train_original.py and train_expand.py (the paper's recipe as defaults)."""
    from distdiff import augment, datasets, engine  # torchvision, timm: only the training scripts pay

    add_positional_twins(parser, positionals)
    add = flag_adder(parser, TRAIN_SPELLINGS, train_defaults())  # the authors' train.py spellings among them
    add("dataset", default=None, help="dataset name (see distdiff/registry.py) or folder:<path>")
    add("arch", help="classifier architecture (models/classifiers.py)")
    add("lr", type=RATE, help="peak SGD learning rate (cosine schedule)")
    add("pretrained", type=str2bool, nargs="?", const=True,
        help="start from ImageNet weights (timm); True/False, or bare as in the authors' launchers")
    add("gpu", type=GPU_INDEX,
        help="GPU index, the authors' positional; an error where torch cannot use CUDA (--device cpu ignores it)")
    add("epochs", type=COUNT, help="training epochs")
    add("batch_size", type=COUNT, help="batch size")
    add("momentum", type=Number(float, 0, 1, low_open=True, high_open=True),
        help="Nesterov momentum (Nesterov needs one above 0)")
    add("weight_decay", type=NON_NEGATIVE, help="weight decay")
    add("image_size", type=COUNT, help="crop size fed to the network")
    add("resize_size", type=COUNT, help="resize before cropping (at least --image_size)")
    add("resize_mode", choices=["shorter", "squash"],
        help="shorter: the shorter side to --resize_size, aspect kept; squash: to resize_size x resize_size "
             "(the authors' Resize((256, 256)))")
    add("rotation", type=DEGREES, help="RandomRotation degrees")
    add("hflip", type=str2bool, help="RandomHorizontalFlip (off for digits)")
    add("aug", choices=list(augment.AUGMENTATIONS), metavar="NAME",
        help=_help("extra augmentation: " + augment.help_text()))
    add("eval_batch_size", type=COUNT,
        help="batch size of the val/test passes (the authors' --val-batch-size 64)")
    add("eval_every", type=COUNT,
        help="run the val and test passes every N epochs (the last epoch always); summary.csv leaves the "
             "other epochs' accuracies empty and results.json uses the evaluated epochs only")
    add("workers", type=OrAuto(int, 0),
        help="DataLoader worker processes (0 = the main process); auto: 0 on the CPU, on CUDA the cores "
             f"this process may use divided by $DISTDIFF_TRAIN_JOBS (runs side by side), at most "
             f"{engine.MAX_AUTO_WORKERS}")
    add("cache_mb", type=OrAuto(int, 0),
        help=_help("keep decoded, resized uint8 images in memory up to this many MB in all (training images "
                   "first; 0 = no cache); splits that do not fit are decoded every epoch. auto: what the "
                   f"splits need, at most {datasets.AUTO_CACHE_FRACTION:.0%} of the memory available at the "
                   "start (MemAvailable, within the cgroup's limit) divided by $DISTDIFF_TRAIN_JOBS, the "
                   "training processes that scripts/run_jobs.sh runs side by side"))
    add("output", help="root of all run directories")
    add("run_dir",
        help="this run's directory, instead of <output>/<dataset>/<arch>_..._lr<lr>/seed<N> (the authors' --checkpoint)")
    add("data_dir",
        help="root of the registered datasets' trees (default: data/, or $DISTDIFF_DATA_ROOT)")
    add("seed", type=INDEX, help="training seed (the paper averages seeds 1-3)")
    add("interpolation", choices=list(datasets.INTERPOLATIONS), help="resize filter of the train and test transforms")
    add("guide_selection", choices=["val", "test"],
        help="model_best.pth.tar (the guide): val = the best val epoch, or the last epoch without a val split; "
             "test = the best test epoch, the authors' choice (selected on test; args.yaml says so)")
    add("preset", choices=sorted(TRAIN_PRESETS),
        help="set a group of flags at once (flags on the command line still win): authors = their training "
             "(Resize((256, 256)), bicubic for the guide and bilinear for retraining, the best test epoch kept); "
             "the run dir gets _preset-<name>")
    add("precision", type=train_precision, choices=TRAIN_PRECISIONS,
        help="autocast dtype (also --amp): auto = bf16 on CUDA (fp16 with a GradScaler on GPUs without bf16), "
             "fp32 on the CPU; off or fp32 = no autocast; fp16 and bf16 need CUDA")
    add("train_fc", type=str2bool, nargs="?", const=True,
        help="train the classification head only, the backbone frozen (the authors' --train_fc, for a "
             "--pretrained backbone); the experiment name gets _fc")
    add("channels_last", type=auto_or_bool,
        help="NHWC model and batches (faster convolutions on tensor cores): auto = on CUDA, off on the CPU")
    add_runtime_flags(parser)
    return parser



def add_train_expand_flags(parser):
    """train_expand.py's flags: the training flags with EXP as a fourth positional, and the
    expanded set."""
    add_train_flags(parser, TRAIN_POSITIONALS[:3] + [("exp", TEXT)] + TRAIN_POSITIONALS[3:])
    add = flag_adder(parser, TRAIN_SPELLINGS)
    add("exp", default=None, help="expansion name, e.g. distdiff_x5 or sd_x5 (required, unless --expanded_dir and "
                                  "--run_dir name the expanded set and the run dir, the authors' form)")
    add("expanded_dir", nargs="+", default=None,
        help="expanded ImageFolder(s) (default: <output>/<dataset>/expansions/<exp>)")
    add("equal_iterations", action="store_true",
        help="scale epochs so the optimizer takes as many steps as on the original set")
    add("expand_num", type=COUNT, default=None,
        help="train on the first N copies of each source only (the authors' --expand_num; default: all); the "
             "run dir's experiment name gets _first<N>")
    add("allow_partial", action="store_true",
        help="train on an expanded folder that is incomplete (shards missing) or was not written by "
             "expand_distdiff.py, with a warning; args.yaml records the fraction of the expansion present")
    return parser


def parse_train_args(parser, argv, script):
    """The training scripts' settings: defaults < configs/<dataset>.yaml [train] < --preset (the
    training preset of `script`, "original" or "expand") < command line."""
    from distdiff.config import dataset_section, parse_args
    from distdiff.presets import train_preset_values

    args = parse_args(parser, argv, config=dataset_section("train"),
                      overlay=lambda settings: train_preset_values(settings.preset, script))
    if args.resize_size < args.image_size:  # the random and centre crops need the resized image at least that big
        raise DistDiffError(f"--resize_size {args.resize_size} is smaller than --image_size {args.image_size}")
    return args


def run_cli(main, argv=None):
    """Call main(argv); a DistDiffError ends the process with one 'error: ...' line, exit 1."""
    try:
        result = main(argv)
    except DistDiffError as err:
        sys.exit(f"error: {err}")
    sys.exit(result if isinstance(result, int) else 0)
