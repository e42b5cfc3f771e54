"""Command-line options shared by several scripts, as plain data.

The scripts own their argparse parsers; this table only lists flags that more than one
script exposes, so that train_original.py and train_expand.py cannot drift apart.
Defaults are the paper's (ResNet-50 from scratch, SGD lr 0.1, 100 epochs, batch 64);
configs/<dataset>.yaml overrides them per dataset, and the command line overrides both.
"""
from distdiff import augment
from distdiff.runs import str2bool

# (flags, argparse keyword arguments)
TRAIN_OPTIONS = [
    (("--dataset",), dict(default=None, help="dataset name (see distdiff/datasets.py) or folder:<path>")),
    (("--arch",), dict(default="resnet50", help="classifier architecture")),
    (("--lr",), dict(type=float, default=0.1, help="peak SGD learning rate (cosine schedule)")),
    (("--pretrained",), dict(type=str2bool, default=False, help="start from ImageNet weights (timm)")),
    (("--gpu",), dict(default=None, help="GPU index, the authors' positional; CPU when CUDA is absent")),
    (("--device",), dict(default="auto", help="auto | cpu | cuda | cuda:<i>")),
    (("--precision",), dict(default="fp32", choices=["fp32", "fp16", "bf16"],
                            help="autocast dtype on CUDA (fp16 uses a GradScaler)")),
    (("--epochs",), dict(type=int, default=100, help="training epochs")),
    (("--batch_size", "--batch-size"), dict(type=int, default=64, help="batch size")),
    (("--momentum",), dict(type=float, default=0.9, help="Nesterov momentum")),
    (("--weight_decay", "--weight-decay"), dict(type=float, default=1e-4, help="weight decay")),
    (("--seed",), dict(type=int, default=1, help="training seed (the paper averages seeds 1-3)")),
    (("--image_size", "--image-size"), dict(type=int, default=224, help="crop size fed to the network")),
    (("--resize_size", "--resize-size"), dict(type=int, default=256, help="resize before cropping")),
    (("--rotation",), dict(type=float, default=15.0, help="RandomRotation degrees")),
    (("--hflip",), dict(type=str2bool, default=True, help="RandomHorizontalFlip (off for digits)")),
    (("--aug",), dict(default="default", metavar="NAME",
                      help="extra augmentation (checked by distdiff/augment.py, so YAML values are checked "
                           "too): " + augment.help_text())),
    (("--workers",), dict(type=int, default=0, help="DataLoader workers (0 = main process)")),
    (("--threads",), dict(type=int, default=0, help="torch CPU threads (0 = torch default)")),
    (("--output",), dict(default="checkpoint", help="root of all run directories")),
]
# Positional forms from the seed README: `train_original.py caltech-101 resnet50 0.1 False 0`.
TRAIN_POSITIONALS = [("dataset", str), ("arch", str), ("lr", float), ("pretrained", str2bool),
                     ("gpu", str)]


def add_options(parser, options, positionals=()):
    """Register positional twins (default SUPPRESS, so absent ones never clobber) and flags."""
    import argparse  # only to read the SUPPRESS sentinel; the parser belongs to the script
    for name, kind in positionals:
        parser.add_argument(name, nargs="?", type=_keep_suppress(kind), default=argparse.SUPPRESS,
                            help=f"same as --{name}")
    for flags, kwargs in options:
        parser.add_argument(*flags, **kwargs)
    return parser


def _keep_suppress(kind):
    """argparse applies `type` to string defaults too, so let the SUPPRESS sentinel through."""
    def convert(value):
        return value if value == "==SUPPRESS==" else kind(value)
    convert.__name__ = kind.__name__
    return convert
