"""The training recipe as one dataclass: the paper's defaults, written once. No torch import, so
light tools (`python -m distdiff.runs`, the shell launchers through it) read the same defaults as
the training scripts' flags (distdiff/options.py) and distdiff/training.py."""
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the defaults are the paper's recipe (see distdiff/options.py)."""
    dataset: str
    arch: str = "resnet50"
    lr: float = 0.1
    pretrained: bool = False
    epochs: int = 100
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    image_size: int = 224
    resize_size: int = 256
    resize_mode: str = "shorter"
    rotation: float = 15.0
    hflip: bool = True
    aug: str = "default"
    seed: int = 1
    output: str = "checkpoint"
    run_dir: str | None = None       # an explicit run dir (the authors' --checkpoint) instead of the derived one
    data_dir: str | None = None      # root of the registered datasets (default: data/)
    device: str = "auto"
    gpu: str | None = None
    precision: str = "auto"         # autocast: bf16 on CUDA (fp16 + GradScaler without bf16), fp32 on the CPU
    channels_last: str | bool = "auto"  # NHWC model and batches: on CUDA
    threads: int = 0
    eval_batch_size: int = 64
    eval_every: int = 1              # val/test passes every N epochs; the last epoch always has one
    workers: int | str = "auto"      # DataLoader processes; auto: 0 on the CPU, up to 8 on CUDA
    cache_mb: int | str = "auto"     # decoded-image cache; auto: what the splits need, within a memory share
    interpolation: str = "bilinear"  # resize filter (the authors' guide training: bicubic)
    guide_selection: str = "val"     # model_best: best val epoch (last without val) | best test epoch (authors)
    preset: str | None = None        # a group of the above (distdiff/presets.py); named in the run dir
    train_fc: bool = False           # train the classification head only (the authors' --train_fc); run dir _fc

    @classmethod
    def from_args(cls, args):
        """The fields of a parsed namespace (extra attributes are ignored)."""
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})


def default(name):
    """The recipe's default of one field (e.g. 'lr')."""
    return TrainConfig.__dataclass_fields__[name].default
