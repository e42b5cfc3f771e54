"""Named groups of expand_distdiff.py settings (`--preset NAME`); flags given on the command line
still win, and args.yaml records the resolved values.

`authors` reproduces the authors' generate_data.py algorithm (their code, as read line by line;
docs/fidelity.md lists each element). What it does not reproduce:
  * their random number stream (one global seed per process, so their images depend on the number
    of splits): the draws here stay per item;
  * their arithmetic: their guidance gradient is an unscaled fp16 backward; here the variables
    (a, b) and the update are fp32 and the backward is loss-scaled (the UNet, decoder and guide do
    run in fp16 on CUDA under the preset, as theirs);
  * their energy over a batch is a mean, ours a per-item sum; their launcher samples at batch 1,
    where the two are the same, and a batch here is always a stack of batch-1 items.
The training side (TRAIN_PRESETS below) lists its own limits.
"""

from distdiff import DistDiffError

AUTHORS = {
    "cluster": "agglomerative",        # average-linkage clustering of each class's unit features
    "num_groups": 3,                   # their K
    "renormalize_prototypes": True,    # class and group means divided by their norms
    "guide_input": "authors",          # raw decoder output, bicubic to the guide's size; squash for prototypes
    "framing": "random",               # shorter side to the model's size, then a random crop
    "shared_posterior": True,          # one VAE posterior sample per source image
    "shared_prompt": True,             # with --language_enhance, one sentence per source image
    "start_rule": "authors",           # first denoised index int((1 - s) T)
    "prompts": "authors",              # "a photo of a {}." (DTD: "{} texture.")
    "guide_precision": "pipeline",     # their guide runs in fp16 during guidance (fp32 for prototypes)
    "encode_precision": "fp32",        # their sources and prompts are encoded before the fp16 cast
}
PRESETS = {"authors": AUTHORS}

# The authors' training (their train.py for the guide and the original-only baseline, and
# train_expanded_data_concat_original.py for the retraining): Resize((256, 256)) then the same
# crops and augmentations as ours, bicubic for the guide, torchvision's default bilinear for the
# retraining, and the checkpoint of the best test epoch kept as the guide; no autocast (fp32).
# Also under the preset: --aug autoaug/randaug/cutout are not applied, as in their train_transform.py
# (training.applied_aug); their AugMix with its JSD loss is --aug augmix_jsd. Not reproduced: their
# random number streams, their CIFAR-100 subset file (not public) and MedMNIST folder export (the
# .npz splits are read instead), and their datasets' splits, which are datasets of their own here
# (stanford_cars_authors, ...: data/README.md). The expansion's limits are in the module docstring.
TRAIN_PRESETS = {"authors": {"resize_mode": "squash", "guide_selection": "test", "precision": "fp32"}}
AUTHORS_INTERPOLATION = {"original": "bicubic", "expand": "bilinear"}


def train_preset_values(name, script):
    """The training flags of preset `name` for `script` ("original": train_original.py, the guide;
    "expand": train_expand.py)."""
    if name is None:
        return {}
    return {**TRAIN_PRESETS[name], "interpolation": AUTHORS_INTERPOLATION[script]}


def preset_values(name, guidance):
    """The flag values of preset `name` for this guidance mode."""
    if name is None:
        return {}
    values = dict(PRESETS[name])
    if name == "authors":
        # Their transform guidance scores raw features; their direct guidance normalises them.
        values["normalize_features"] = guidance == "direct"
        # Their UNet and VAE decoder run in half precision: --precision auto already does that on CUDA.
    return values


def apply_targets(optimize_targets, lambda_class, lambda_group):
    """The authors' --optimize_targets ('global_prototype-local_prototype'): a term it leaves out
    gets weight 0. Returns (lambda_class, lambda_group)."""
    if optimize_targets is None:
        return lambda_class, lambda_group
    targets = set(optimize_targets.split("-"))
    unknown = targets - {"global_prototype", "local_prototype"}
    if unknown or not targets:
        raise DistDiffError(f"--optimize_targets {optimize_targets!r}: use global_prototype, local_prototype "
                            "or global_prototype-local_prototype")
    return (lambda_class if "global_prototype" in targets else 0.0,
            lambda_group if "local_prototype" in targets else 0.0)
