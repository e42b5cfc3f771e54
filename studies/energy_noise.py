"""The energy-or-noise study (docs/energy_or_noise.md): the headroom gate and the report.

    python -m studies.energy_noise headroom checkpoint/digits10/sweeps/energy_noise_10shot/replicated.json inverted0
    python -m studies.energy_noise report --figure figure/energy_or_noise.png

`headroom` exits 0 when guidance is to be tested with that prior at 10 shots (the rule committed
with the study), 1 when not, and says why in one line. `report` reads every setting's
replicated.json that exists and prints one markdown section: per setting, the four components'
accuracy and energy means over expansions, their contrasts against `none`, and the primary
contrast (both - noise only) with the rule's verdict; the figure shows the same.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import json
import sys
from pathlib import Path

from studies.grid import save_figure
from studies.replication import HEADER, fmt, side_of_zero
from distdiff.domains import OneLineParser
from distdiff.options import run_cli

COMPONENTS = ("none", "noise", "gradient", "both")
# (label, sweep dir under the checkpoint root, the unguided cell, suffix of the guided cells' names)
SETTINGS = (("3 shots, in-domain, radius 0.2", "digits/sweeps/energy_noise_3shot", "none", ""),
            ("3 shots, in-domain, radius 1.0", "digits/sweeps/energy_noise_3shot", "none", "_r1"),
            ("10 shots, in-domain, radius 0.2", "digits10/sweeps/energy_noise_10shot", "none_indomain", "_indomain"),
            ("10 shots, inverted 0 %, radius 0.2", "digits10/sweeps/energy_noise_10shot", "none_inverted0",
             "_inverted0"),
            ("10 shots, low-contrast 0 %, radius 0.2", "digits10/sweeps/energy_noise_10shot", "none_lowcontrast0",
             "_lowcontrast0"))


def headroom(replicated, prior):
    """(test guidance?, reason): in-domain when unguided expansion beats original-only; a shifted
    prior when its unguided expansion is below the in-domain one (95 % intervals, test last_acc)."""
    contrasts = {c["contrast"]: c for c in json.loads(Path(replicated).read_text())["contrasts"]}
    name = "none_indomain − original" if prior == "indomain" else f"none_{prior} − none_indomain"
    c = contrasts[name]
    text = f"{name}: test last_acc {fmt(c['d_last_acc'], c['d_last_acc_low'], c['d_last_acc_high'])} " \
           f"({c['d_last_acc_n']} expansions)"
    if c["d_last_acc_low"] is None:
        return False, text + ": no interval, no headroom shown"
    if prior == "indomain":
        return c["d_last_acc_low"] > 0, text + (": expansion helps" if c["d_last_acc_low"] > 0 else ": no headroom")
    return c["d_last_acc_high"] < 0, text + (": the prior costs accuracy" if c["d_last_acc_high"] < 0
                                             else ": no cost shown, no headroom")


def verdict(contrast):
    """The committed rule on a primary both - noise contrast."""
    return {None: "undecided (an interval is missing)", "above": "the gradient contributes",
            "below": "the gradient hurts", "neither": "no measurable contribution of the gradient"}[side_of_zero(contrast)]


def load_settings(root):
    """[(label, {component: cell name}, replicated dict)] of the settings whose guided cells have
    at least one finished expansion."""
    found = []
    for label, folder, none, suffix in SETTINGS:
        path = Path(root) / folder / "replicated.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        names = {comp: none if comp == "none" else comp + suffix for comp in COMPONENTS}
        done = {c["cell"]: c["expansions_done"] for c in data["cells"]}
        if any(done.get(names[comp]) for comp in COMPONENTS[1:]):
            found.append((label, names, data))
    return found


def setting_section(label, names, data):
    """Markdown for one setting."""
    cells = {c["cell"]: c for c in data["cells"]}
    contrasts = {c["contrast"]: c for c in data["contrasts"]}
    lines = [f"### {label}", "", "| component | expansions | test last_acc | Δ vs none, test last_acc | "
             "Δ vs none, last-epoch val | energy before → after | energy dropped |", "|---|---|---|---|---|---|---|"]
    for comp, name in names.items():
        cell = cells.get(name)
        if cell is None:
            continue
        vs = contrasts.get(f"{name} − {names['none']}")
        acc = "-" if cell["last_acc"] is None else f"{cell['last_acc']:.2f}"
        d_test = "-" if vs is None else fmt(vs["d_last_acc"], vs["d_last_acc_low"], vs["d_last_acc_high"])
        d_val = "-" if vs is None else fmt(vs["d_last_val_acc"], vs["d_last_val_acc_low"], vs["d_last_val_acc_high"])
        energy = "-" if cell["energy_before"] is None else f"{cell['energy_before']:.4f} → {cell['energy_after']:.4f}"
        dropped = "-" if cell["energy_drop_frac"] is None else f"{cell['energy_drop_frac']:.0%}"
        lines.append(f"| {comp} | {cell['expansions_done']} | {acc} | {d_test} | {d_val} | {energy} | {dropped} |")
    primary = contrasts.get(f"{names['both']} − {names['noise']}")
    if primary is not None:
        level = f"{primary['confidence']:.0%}"
        lines += ["", f"Primary, both − noise only ({level} t over {primary['d_last_acc_n']} expansions): test "
                  f"last_acc {fmt(primary['d_last_acc'], primary['d_last_acc_low'], primary['d_last_acc_high'])}, "
                  f"last-epoch val {fmt(primary['d_last_val_acc'], primary['d_last_val_acc_low'], primary['d_last_val_acc_high'])}; "
                  f"energy after the step {fmt(primary['d_energy_after'], primary['d_energy_after_low'], primary['d_energy_after_high'], 4)}. "
                  f"Rule: {verdict(primary)}."]
    return "\n".join(lines)


def plot(settings, path):
    """Per setting: Δ test last_acc vs none (with intervals over expansions) and the energy after
    the step, for the components."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(settings), figsize=(3.2 * len(settings) + 1, 6), squeeze=False)
    for column, (label, names, data) in enumerate(settings):
        cells = {c["cell"]: c for c in data["cells"]}
        contrasts = {c["contrast"]: c for c in data["contrasts"]}
        guided = [comp for comp in COMPONENTS[1:] if names[comp] in cells]
        means, arms = [], [[], []]
        for comp in guided:
            c = contrasts.get(f"{names[comp]} − {names['none']}", {})
            mean, low, high = c.get("d_last_acc"), c.get("d_last_acc_low"), c.get("d_last_acc_high")
            means.append(float("nan") if mean is None else mean)
            arms[0].append(0.0 if low is None else mean - low)
            arms[1].append(0.0 if high is None else high - mean)
        ax = axes[0][column]
        ax.errorbar(range(len(guided)), means, yerr=arms, fmt="o", capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(guided)), guided)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("Δ test last_acc vs none" if column == 0 else "")
        ax = axes[1][column]
        before = [cells[names[comp]]["energy_before"] for comp in guided]
        after = [cells[names[comp]]["energy_after"] for comp in guided]
        # Points, not bars: the axis does not start at zero.
        ax.plot(range(len(guided)), [float("nan") if a is None else a for a in after], "o", color="tab:orange",
                ms=8, label="after the step")
        ax.plot(range(len(guided)), [float("nan") if b is None else b for b in before], "k_", ms=20,
                label="before")
        lows = [v for v in before + after if v is not None]
        if lows:
            ax.set_ylim(min(lows) * 0.98, max(lows) * 1.02)
        ax.set_xticks(range(len(guided)), guided)
        ax.set_ylabel("look-ahead energy" if column == 0 else "")
        if column == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Energy or noise: means over expansions, t intervals over expansions", fontsize=10)
    save_figure(fig, path)


def get_parser():
    parser = OneLineParser(prog="python -m studies.energy_noise", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gate = sub.add_parser("headroom", help="exit 0 when guidance is to be tested with this prior at 10 shots")
    gate.add_argument("replicated", help="replicated.json of the 10-shot headroom sweep")
    gate.add_argument("prior", choices=["indomain", "inverted0", "lowcontrast0"])
    report = sub.add_parser("report", help="the study's tables (markdown on stdout) and figure")
    report.add_argument("--checkpoint_root", default="checkpoint")
    report.add_argument("--figure", default="figure/energy_or_noise.png")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.command == "headroom":
        test, reason = headroom(args.replicated, args.prior)
        print(("test guidance: " if test else "skip guidance: ") + reason)
        return 0 if test else 1
    settings = load_settings(args.checkpoint_root)
    if not settings:
        sys.exit("error: no setting of the study has run yet (scripts/exps/energy_or_noise.sh)")
    print(HEADER + "\n\n" + "\n\n".join(setting_section(*s) for s in settings))
    plot(settings, args.figure)
    return 0


if __name__ == "__main__":
    run_cli(main)
