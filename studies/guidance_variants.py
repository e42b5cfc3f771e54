"""The guidance-variants study (docs/guidance_variants.md): the committed rule, applied to the
committed tables.

    python -m studies.guidance_variants report --figure figure/guidance_variants.png

`report` reads docs/guidance_variants/<grid>/replicated.json (copied there by
scripts/exps/guidance_variants.sh, so anyone can recompute the answer from committed data) for
each setting that has run, and prints markdown: per setting, every primary contrast with the
rule's verdict and the smallest difference its design detects (80 % power at its level), then
the secondary contrasts, labelled as such, then the cells with their mechanism columns; the
figure shows the primary contrasts on test and on val.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import json
import sys
from pathlib import Path

from distdiff.domains import OneLineParser
from distdiff.options import run_cli
from studies.grid import save_figure
from studies.replication import HEADER, WELCH, fmt, mechanism_table, side_of_zero

# (label, grid name); a grid's primary contrasts are those its YAML marks primary.
SETTINGS = (("10 shots (real groups: K = 3 of 10 images per class)", "guidance_variants_10shot"),
            ("3 shots (each group prototype is one training image)", "guidance_variants_3shot"))
WORDS = {  # (side of zero on both test and val) -> the rule's words, against a noise control or none
    "noise": {"above": "helps", "below": "hurts", "neither": "no measurable effect"},
    "none": {"above": "beats plain img2img", "below": "below plain img2img",
             "neither": "no measurable difference from plain img2img"},
}


def verdict(contrast):
    """The rule's words for a primary contrast `variant − control`."""
    side = side_of_zero(contrast)
    if side is None:
        return "undecided (an interval is missing)"
    control = contrast["contrast"].split(" − ")[1]
    return WORDS["none" if control == "none" else "noise"][side]


def load_settings(tables):
    """[(label, replicated dict)] of the settings whose tables exist under `tables`."""
    found = []
    for label, grid in SETTINGS:
        path = Path(tables) / grid / "replicated.json"
        if path.is_file():
            found.append((label, json.loads(path.read_text())))
    return found


def detectable(contrast, metric, power=0.8):
    """The smallest true difference the contrast's design detects with `power` at its level:
    (t crit + t power) x the standard error that the interval's half-width implies (n - 1
    degrees of freedom, as the paired interval). None without an interval, and for a Welch
    interval (a contrast with the original-only runs), whose degrees of freedom are not n - 1."""
    from scipy import stats

    low, high, n = contrast[f"d_{metric}_low"], contrast[f"d_{metric}_high"], contrast[f"d_{metric}_n"]
    if low is None or high is None or n < 2 or contrast.get("interval", "").startswith(WELCH):
        return None
    critical = stats.t.ppf(1 - (1 - contrast["confidence"]) / 2, n - 1)
    return (critical + stats.t.ppf(power, n - 1)) * (high - low) / 2 / critical


def contrast_line(c, with_verdict):
    test = fmt(c["d_last_acc"], c["d_last_acc_low"], c["d_last_acc_high"])
    val = fmt(c["d_last_val_acc"], c["d_last_val_acc_low"], c["d_last_val_acc_high"])
    mde = " / ".join("-" if d is None else f"{d:.2f}" for d in (detectable(c, "last_acc"), detectable(c, "last_val_acc")))
    cells = [c["contrast"], f"{c['confidence']:.2%}", str(c["d_last_acc_n"]), test, val, mde,
             fmt(c["d_energy_after"], c["d_energy_after_low"], c["d_energy_after_high"], 4)]
    return "| " + " | ".join(cells + ([verdict(c)] if with_verdict else [])) + " |"


def setting_section(label, data):
    """Markdown for one setting: primary contrasts with verdicts, secondary ones, the cells."""
    primary = [c for c in data["contrasts"] if c["primary"]]
    # The sweep adds each guided cell against its own control; those against a variant's own
    # noise or none are in the grid's list already, the rest (e.g. paper − none) are secondary.
    secondary = [c for c in data["contrasts"] if not c["primary"]]
    head = ("| contrast | level | expansions | Δ test last_acc | Δ last-epoch val | detectable Δ, test / val | "
            "Δ energy after |")
    lines = [f"### {label}", "", "Primary (the rule):", "", head + " verdict |", "|---|---|---|---|---|---|---|---|"]
    lines += [contrast_line(c, True) for c in primary]
    lines += ["", "Secondary (reported, not used by the rule):", "", head, "|---|---|---|---|---|---|---|"]
    lines += [contrast_line(c, False) for c in secondary]
    cells = [(c["cell"], c["expansions_done"], c, c) for c in data["cells"]]
    lines += ["", "Cells (means over expansions):", "", mechanism_table(cells)]
    return "\n".join(lines)


def plot(settings, path):
    """Per setting, each primary contrast's Δ test last_acc and Δ last-epoch val with its interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings) + 1, 4.2), squeeze=False)
    for ax, (label, data) in zip(axes[0], settings):
        primary = [c for c in data["contrasts"] if c["primary"]]
        for offset, (metric, name) in zip((-0.12, 0.12), (("last_acc", "test last_acc"),
                                                           ("last_val_acc", "last-epoch val"))):
            means = [c[f"d_{metric}"] for c in primary]
            arms = [[m - c[f"d_{metric}_low"] if c[f"d_{metric}_low"] is not None else 0 for m, c in zip(means, primary)],
                    [c[f"d_{metric}_high"] - m if c[f"d_{metric}_high"] is not None else 0 for m, c in zip(means, primary)]]
            ax.errorbar([i + offset for i in range(len(primary))], means, yerr=arms, fmt="o", capsize=3, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(primary)), [c["contrast"] for c in primary], rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("Δ accuracy (points)")
        ax.legend(fontsize=7)
    levels = sorted({f"{c['confidence']:.2%}" for _, data in settings for c in data["contrasts"] if c["primary"]})
    fig.suptitle(f"Guidance variants: primary contrasts, means over expansions, {' / '.join(levels)} t intervals",
                 fontsize=10)
    save_figure(fig, path)


def get_parser():
    parser = OneLineParser(prog="python -m studies.guidance_variants", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="the study's answer (markdown on stdout) and figure")
    report.add_argument("--tables", default="docs/guidance_variants",
                        help="folder holding <grid>/replicated.json of each setting")
    report.add_argument("--figure", default="figure/guidance_variants.png", help="where the primary contrasts' figure goes")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    settings = load_settings(args.tables)
    if not settings:
        sys.exit(f"error: no setting's replicated.json under {args.tables} (scripts/exps/guidance_variants.sh)")
    print(HEADER + "\n\n" + "\n\n".join(setting_section(*s) for s in settings))
    plot(settings, args.figure)
    return 0


if __name__ == "__main__":
    run_cli(main)
