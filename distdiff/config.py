"""Configuration: paper defaults (argparse) < configs/<dataset>.yaml (or --config) < command line.

There is one merger, `parse_args`, for every script. It parses the command line once with every
default suppressed, so it knows exactly which flags the user typed, and only those beat the
YAML. Positional twins of named flags (`train_original.py digits resnet18` vs `--dataset digits
--arch resnet18`, the seed README's form) are registered with the dest `<name>_positional` and
merged into `<name>`; giving both with different values is an error.
"""
import argparse
import dataclasses
from pathlib import Path

import yaml

from distdiff import DistDiffError
from distdiff.domains import BOOL, Number

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
POSITIONAL_SUFFIX = "_positional"
PRECISIONS = ("fp32", "fp16", "bf16")


# The other spellings of the project's flags, one table per script family. Most are the authors'
# names (their generate_data.py, train.py and launchers), so their command lines run unchanged; a
# flag also always takes its dashed form (--guide-ckpt for --guide_ckpt).
EXPAND_SPELLINGS = {
    "dataset": ("-d",), "model": ("--pretrained_model_name_or_path",), "guide_ckpt": ("--encoder_weight_path",),
    "guide_arch": ("-a",), "out": ("--output_dir",), "expand_ratio": ("--num_images_per_prompt",),
    "cfg_scale": ("--guidance_scale",), "language_enhance": ("-le",), "guidance": ("--guidance_type",),
    "lookahead_steps": ("--guidance_period",), "step_size": ("--rho",), "radius": ("--constraint_value",),
    "lambda_class": ("--gs",), "lambda_group": ("--ls",), "num_groups": ("--K",),
    "batch_size": ("--train_batch_size",),
    "split": ("--shard_id", "--shard-id"), "total_split": ("--num_shards", "--num-shards"),  # accelerate's words
}
TRAIN_SPELLINGS = {
    "dataset": ("-d",), "arch": ("-a",), "lr": ("--learning-rate",), "batch_size": ("--train-batch-size",),
    "weight_decay": ("--wd",), "eval_batch_size": ("--val-batch-size",), "workers": ("-j",),
    "run_dir": ("--checkpoint",), "seed": ("--manualSeed",), "expanded_dir": ("--data_expanded_dir",),
    "precision": ("--amp",),
}


def spellings_of(name, table):
    """Option strings of flag `name`: --name, its dashed form, then the table's other spellings."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    return names + [spelling for spelling in table.get(name, ()) if spelling not in names]


def auto_or_count(value, flag, meaning):
    """A flag that takes "auto" or a whole number >= 0 (--workers, --cache_mb): the value, with an
    integer string converted; anything else is a one-line error naming `flag` and `meaning`."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise DistDiffError(f"{flag} {value!r}: use auto or {meaning}")


str2bool = BOOL  # the authors' 'True'/'False' positional strings (and 1/0, yes/no)


def load_yaml_config(path):
    """Read a YAML config into a dict (empty file -> {})."""
    path = Path(path)
    if not path.is_file():
        raise DistDiffError(f"config file {path} not found")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise DistDiffError(f"{path} must hold a mapping of flag names to values")
    return data


def dataset_yaml(dataset, config_dir=CONFIG_DIR):
    """configs/<dataset>.yaml as a dict; {} for folder:<path> datasets and datasets without one."""
    path = Path(config_dir) / f"{dataset}.yaml"
    if not dataset or dataset.startswith("folder:") or not path.is_file():
        return {}
    return load_yaml_config(path)


def dataset_section(section, config_dir=CONFIG_DIR):
    """A `config` callable for parse_args: the `section` of the chosen dataset's YAML."""
    def config(settings):
        dataset = getattr(settings, "dataset", None)
        where = Path(config_dir) / f"{dataset}.yaml"
        return dataset_yaml(dataset, config_dir).get(section) or {}, f"{where} [{section}]"
    return config


def add_positional_twins(parser, twins):
    """Register `name` positionals (nargs='?') that mean the same as `--name`."""
    for name, kind in twins:
        parser.add_argument(name + POSITIONAL_SUFFIX, metavar=name, nargs="?", type=_keep_suppress(kind),
                            default=argparse.SUPPRESS, help=f"same as --{name}")
    return parser


def _keep_suppress(kind):
    """argparse applies `type` to a positional's string default too; let SUPPRESS through."""
    def convert(value):
        return value if value == argparse.SUPPRESS else kind(value)
    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    convert.domain = kind  # what the twin accepts (tests/test_domains.py reads it)
    return convert


_UNSET = object()  # marks a flag the command line did not give


def explicit_args(parser, argv):
    """{dest: value} of what the command line sets, with positional twins merged.

    argparse fills in a default only where the namespace it is given lacks the attribute, so a
    namespace with every dest preset to a marker keeps the marker exactly where no flag was typed.
    """
    namespace = argparse.Namespace(**{dest: _UNSET for dest in _named_actions(parser)})
    given = {dest: value for dest, value in vars(parser.parse_args(argv, namespace)).items() if value is not _UNSET}
    for key in [k for k in given if k.endswith(POSITIONAL_SUFFIX)]:
        name, value = key[:-len(POSITIONAL_SUFFIX)], given.pop(key)
        if name in given and given[name] != value:
            raise DistDiffError(f"{name} given twice with different values ({value!r} positionally, "
                                f"{given[name]!r} as --{name}); keep one")
        given[name] = value
    return given


def _named_actions(parser):
    return {a.dest: a for a in parser._actions
            if a.dest != "help" and not a.dest.endswith(POSITIONAL_SUFFIX)}


def check_config_values(parser, values, where):
    """Reject unknown keys; convert string values with the flag's type and check its choices."""
    actions = _named_actions(parser)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise DistDiffError(f"{where}: unknown key(s) {unknown}; keys are flag names such as "
                            f"{sorted(actions)[:6]}")
    checked = {}
    for key, value in values.items():
        action = actions[key]
        # Text goes through the flag's type; numbers too where the type declares a domain; a list
        # (a flag that takes several values) element by element.
        def convert(item):
            if action.type is None or not (isinstance(item, str) or isinstance(action.type, Number)):
                return item
            try:
                return action.type(item)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                raise DistDiffError(f"{where}: {key}: {err}") from None
        value = [convert(item) for item in value] if isinstance(value, list) and action.nargs else convert(value)
        if action.choices is not None and value not in action.choices:
            raise DistDiffError(f"{where}: {key}={value!r} is not one of {list(action.choices)}")
        checked[key] = value
    return checked


def parse_args(parser, argv=None, config=None, overlay=None):
    """Parse `argv` with precedence argparse default < config < overlay < command line.

    `config(settings) -> (values, where)` returns the YAML values given the defaults and the
    explicit flags (e.g. the dataset's section); `where` names the file in error messages.
    `overlay(settings) -> values` (a preset) sees the settings so far and sets what the command
    line did not.
    """
    explicit = explicit_args(parser, argv)
    defaults = {dest: action.default for dest, action in _named_actions(parser).items()
                if action.default is not argparse.SUPPRESS}
    values = {}
    if config is not None:
        raw, where = config(argparse.Namespace(**{**defaults, **explicit}))
        values = check_config_values(parser, raw, where)
    if overlay is not None:
        # A preset's values meet the same domains as the YAML's (a typo in a preset table is one line).
        values.update(check_config_values(parser, overlay(argparse.Namespace(**{**defaults, **values, **explicit})),
                                          "--preset"))
    return argparse.Namespace(**{**defaults, **values, **explicit})


def resolved_dict(args, extra=None):
    """A namespace, dataclass or dict as a YAML-safe dict (paths as strings), plus `extra`."""
    if dataclasses.is_dataclass(args):
        args = dataclasses.asdict(args)
    items = args.items() if isinstance(args, dict) else vars(args).items()
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(items)}
    resolved.update(extra or {})
    return resolved


def save_args(run_dir, args, extra=None):
    """Write the fully resolved config to <run_dir>/args.yaml (atomically)."""
    from distdiff.fileio import atomic_write_text

    text = yaml.safe_dump(resolved_dict(args, extra), sort_keys=True)
    atomic_write_text(Path(run_dir) / "args.yaml", text)
