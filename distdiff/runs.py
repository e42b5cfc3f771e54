"""Run directories and logging."""
import logging
import sys
from pathlib import Path

from distdiff.config import CONFIG_DIR, dataset_yaml
from distdiff.recipe import default

logger = logging.getLogger("distdiff")


def dataset_dirname(dataset):
    """A filesystem-safe name for a dataset (folder:<path> -> folder_<basename>)."""
    if dataset.startswith("folder:"):
        return "folder_" + Path(dataset[len("folder:"):]).resolve().name
    return dataset


def train_run_dir(output, dataset, arch, pretrained, lr, seed, exp=None, aug=None, resize_mode=None, preset=None):
    """checkpoint/<dataset>/<arch>_<pretrained|unpretrained>[_<exp>]_lr<lr>[_aug-<aug>][_resize-squash]
    [_preset-<name>]/seed<N>.

    The augmentation, resize mode and preset appear only when they are given and not the recipe's
    defaults (None means the default), so run dirs made before those flags existed keep their
    names and stay valid.
    """
    tag = "pretrained" if pretrained else "unpretrained"
    name = f"{arch}_{tag}" + (f"_{exp}" if exp else "") + f"_lr{lr:g}"
    if aug not in (None, default("aug")):
        name += f"_aug-{aug}"
    if resize_mode not in (None, default("resize_mode")):
        name += f"_resize-{resize_mode}"
    if preset:
        name += f"_preset-{preset}"
    return Path(output) / dataset_dirname(dataset) / name / f"seed{seed}"


def default_guide_arch(dataset, config_dir=CONFIG_DIR):
    """configs/<dataset>.yaml's expand.guide_arch (the arch its train section trains), else resnet50."""
    return (dataset_yaml(dataset, config_dir).get("expand") or {}).get("guide_arch", "resnet50")


def default_guide_ckpt(root, dataset, arch=None, config_dir=CONFIG_DIR, preset=None):
    """expand_distdiff.py's default guide: the recipe's default seed, learning rate, augmentation
    and (no) pretraining with `arch` (default: default_guide_arch); trained with `preset` when one
    is given (its run dir, with the preset's resize mode), so the preset's guide goes with the
    preset's expansion."""
    arch = arch or default_guide_arch(dataset, config_dir)
    return preset_run_dir(root, dataset, arch, default("pretrained"), default("lr"), default("seed"),
                          preset=preset) / "model_best.pth.tar"


def expansion_dir(root, dataset, exp):
    """Where expand_distdiff.py writes an expansion and train_expand.py reads it."""
    return Path(root) / dataset_dirname(dataset) / "expansions" / exp


def sweep_dir(root, dataset, name):
    """Where studies/sweep.py writes a sweep's tables, logs and metrics."""
    return Path(root) / dataset_dirname(dataset) / "sweeps" / name


def setup_logging(run_dir=None, filename="log.txt"):
    """Log to stdout and, given a run dir, to <run_dir>/<filename>."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / filename))
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logger


# ---------------------------------------------------------------------------
# `python -m distdiff.runs`: the shell chain's questions, answered by the library
# ---------------------------------------------------------------------------

def train_arch(dataset, config_dir=CONFIG_DIR):
    """configs/<dataset>.yaml's train.arch (the arch the chain trains), else resnet50."""
    return (dataset_yaml(dataset, config_dir).get("train") or {}).get("arch", "resnet50")


def preset_run_dir(output, dataset, arch, pretrained, lr, seed, exp=None, preset=None, aug=None):
    """train_run_dir of a run trained with `preset` (its resize mode and name), or with none."""
    from distdiff.presets import TRAIN_PRESETS

    resize_mode = TRAIN_PRESETS[preset]["resize_mode"] if preset else None
    return train_run_dir(output, dataset, arch, pretrained, lr, seed, exp, aug, resize_mode, preset)


def missing_runs(output, dataset, arch, pretrained, lr, exps, seeds, preset=None):
    """(exp, seed) of the training runs without results.json; exp None is original-only. A seed
    listed twice is asked once."""
    return [(exp, seed) for exp in exps for seed in dict.fromkeys(seeds)
            if not (preset_run_dir(output, dataset, arch, pretrained, lr, seed, exp, preset) / "results.json").is_file()]


def get_parser(description=None):
    """The parser of `python -m distdiff.runs` (one sub-command per question)."""
    from distdiff.domains import INDEX, RATE, OneLineParser

    parser = OneLineParser(prog="python -m distdiff.runs", description=description)
    sub = parser.add_subparsers(dest="question", required=True)
    sub.add_parser("arch", help="the dataset YAML's train arch").add_argument("dataset")
    sub.add_parser("default", help="a default of the training recipe (distdiff/recipe.py)").add_argument("field")
    for name, text, key in (("expansion", "an expansion's folder (expand_distdiff.py's default --out)", "--exp"),
                            ("sweep", "a sweep's folder (studies/sweep.py's tables)", "--name")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--dataset", required=True)
        q.add_argument(key, required=True)
        q.add_argument("--output", default="checkpoint")
    helps = {"name": "a run dir's name (seeds are its seed<N>/)", "dir": "the same as a path under --output",
             "missing": "runs without results.json"}
    for name, text in helps.items():
        q = sub.add_parser(name, help=text)
        q.add_argument("--dataset", required=True)
        q.add_argument("--arch", required=True)
        q.add_argument("--lr", type=RATE, default=default("lr"))
        q.add_argument("--pretrained", default="False", choices=["True", "False"])
        q.add_argument("--output", default="checkpoint")
        q.add_argument("--preset", default=None, help="the training preset the runs use (train_original.py --preset)")
        if name != "missing":
            q.add_argument("--exp", default=None)
            q.add_argument("--aug", default=None, help="the --aug of the runs (default: the recipe's)")
        else:
            q.add_argument("--exps", nargs="+", required=True, help="experiment names, - for original only")
            q.add_argument("--seeds", nargs="+", type=INDEX, required=True)
    return parser


def main(argv=None):
    """Answer the shell chain (single_exp.sh) without torch, so no shell script re-derives a run
    directory or reads a YAML file:

        python -m distdiff.runs arch digits                    # the dataset YAML's train arch
        python -m distdiff.runs default lr                     # the training recipe's default (0.1)
        python -m distdiff.runs name --dataset digits --arch resnet_small --lr 0.1 --exp sd_x5
        python -m distdiff.runs dir --dataset digits --arch resnet_small --lr 0.1   # <output>/<dataset>/<name>
        python -m distdiff.runs name --dataset digits --arch resnet_small --aug mixup   # ..._aug-mixup
        python -m distdiff.runs expansion --dataset digits --exp distdiff_x5   # <output>/<dataset>/expansions/<exp>
        python -m distdiff.runs sweep --dataset digits --name digits_study      # <output>/<dataset>/sweeps/<name>
        python -m distdiff.runs missing --dataset digits --arch resnet_small --lr 0.1 --exps - sd_x5 --seeds 1 2
    `missing` prints "<exp> <seed>" per run without results.json ("-": original only).
    """
    args = get_parser(main.__doc__).parse_args(argv)
    if args.question == "arch":
        print(train_arch(args.dataset))
        return 0
    if args.question == "default":
        print(default(args.field))
        return 0
    if args.question in ("expansion", "sweep"):
        where = expansion_dir if args.question == "expansion" else sweep_dir
        print(where(args.output, args.dataset, args.exp if args.question == "expansion" else args.name))
        return 0
    pretrained = args.pretrained == "True"
    if args.question in ("name", "dir"):
        group = preset_run_dir(args.output, args.dataset, args.arch, pretrained, args.lr, default("seed"), args.exp,
                               args.preset, args.aug).parent
        print(group.name if args.question == "name" else group)
        return 0
    exps = [None if exp == "-" else exp for exp in args.exps]
    for exp, seed in missing_runs(args.output, args.dataset, args.arch, pretrained, args.lr, exps, args.seeds,
                                  args.preset):
        print(exp or "-", seed)
    return 0


if __name__ == "__main__":
    from distdiff.options import run_cli
    run_cli(main)
