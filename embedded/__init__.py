"""The embedded benchmark: the offline stand-in for the paper's setting.

3-shot digits and its shifted domains (digits.py, shifted.py, mixture.py), the tiny
Stable-Diffusion-shaped prior (prior.py: model; prior_training.py, prior_eval.py), SD-1.4's
shapes with random weights and the paper-path rehearsal's stand-ins (sd_shapes.py, rehearsal.py).
It builds on the library (distdiff); the library never imports it. `register_datasets` adds
its datasets to distdiff.registry; the registry calls it through the `distdiff.datasets` entry
point (pyproject.toml) on its first lookup. Cheap: the heavy modules load only when a dataset is
exported.
"""
from distdiff.registry import DATA_ROOT, DatasetSpec, register
from embedded.names import DIGIT_WORDS, SHIFTED, SHIFTED_SPLITS, TEMPLATE

_WORDS = {str(i): word for i, word in enumerate(DIGIT_WORDS)}


def _prepare_digits(spec):
    """Export data/digits on first use (sklearn ships the images)."""
    if not (spec.root / spec.test_split).is_dir():
        from embedded.digits import export_digits
        export_digits(spec.root)


def _prepare_shift(spec):
    """Render a shifted domain from the exported digits on first use."""
    if not all((spec.root / split).is_dir() for split in SHIFTED_SPLITS):
        from embedded.shifted import export_shift
        export_shift(spec.name, spec.root, spec.root.parent / "digits")


def register_datasets():
    """Register digits, digits10 (10 shots) and the shifted digit domains (idempotent)."""
    for name, train in (("digits", "train"), ("digits10", "train10")):
        register(DatasetSpec(name, DATA_ROOT / "digits", TEMPLATE, train, "val", "test", _WORDS,
                             "python scripts/prepare_digits.py", prepare=_prepare_digits))
    # Shifted digit domains for priors trained away from the target: only their `prior` split
    # trains anything; val/test measure a prior per domain.
    for name in SHIFTED:
        register(DatasetSpec(name, DATA_ROOT / name, TEMPLATE, "prior", "val", "test", _WORDS,
                             f"python scripts/prepare_digits.py --shifts {name}", prepare=_prepare_shift))
