"""How far the command line travels: follow argv from expand_distdiff.py's main through every
call it is passed to, and count the files it enters and the returns to files it had left.

    python studies/argv_trail.py            # a 2-source digits expansion, tiny pipeline, random guide
    python studies/argv_trail.py --trail    # and print the trail itself

"Following argv" is made mechanical: a call is on the trail when one of its arguments is the argv
list, the parsed argparse.Namespace, or one of the configuration objects made from them (a
dataclass whose name ends in Config: ExpandConfig and the SampleConfig, GuidanceConfig and
PrototypeConfig inside it). The trail is the file of the innermost such call over time; it
enters a file when it moves there, and returns to a file when it moves back to one it had been
in before (to a caller, or a second call into a module it had left). Library code outside this
repository is not followed. The run is a real one (a 2-source, 1-copy expansion of the embedded
digits, built in a temporary folder), so every branch a normal run takes is on the trail.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads sleep, not spin

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from distdiff.domains import OneLineParser
from distdiff.options import run_cli

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"


def carries_argv(value, argv):
    """True for the argv list itself, a parsed Namespace, or a *Config dataclass instance."""
    if value is argv or isinstance(value, argparse.Namespace):
        return True
    return dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value).__name__.endswith("Config")


def follow(main, argv):
    """Run main(argv) under a profiler; returns (the trail: (file, function) where it moved to
    another file, in order; main's result)."""
    stack, trail = [], []  # one entry per open call: (file, function) when it is on the trail, else None

    def here():
        return next((f for f in reversed(stack) if f is not None), None)

    def profile(frame, event, _arg):
        if event not in ("call", "return"):
            return
        if event == "return":
            if stack:
                stack.pop()
        else:
            path = Path(frame.f_code.co_filename)
            code = frame.f_code
            on = False
            if path.is_relative_to(REPO) and not path.is_relative_to(VENV):
                names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
                on = any(carries_argv(frame.f_locals.get(n), argv) for n in names)
            stack.append((str(path.relative_to(REPO)), code.co_name) if on else None)
        now = here()
        if now is not None and (not trail or trail[-1][0] != now[0]):
            trail.append(now)

    sys.setprofile(profile)
    try:
        result = main(argv)
    finally:
        sys.setprofile(None)
    return trail, result


def measure(trail, script):
    """{files, returns, back_to_script} of a trail (see the module docstring)."""
    seen, returns, back = set(), 0, 0
    for f, _ in trail:
        if f in seen:
            returns += 1
            back += f == script
        seen.add(f)
    return {"files": len(seen), "returns": returns, "back_to_script": back}


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trail", action="store_true", help="print the trail: the file and function at each move, one per line")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="argv-trail-") as tmp:
        return trail_report(Path(tmp), args.trail)


def trail_report(work, show_trail):
    """Build the stand-ins in `work`, follow one expansion's argv and print the measure."""
    os.environ.setdefault("DISTDIFF_DATA_ROOT", str(work / "data"))
    sys.path.insert(0, str(REPO))  # the top-level script
    import expand_distdiff
    from distdiff.registry import ensure_prepared, get_dataset
    from embedded.prior import build_tiny_pipeline
    from embedded.rehearsal import save_random_guide

    spec = get_dataset("digits")
    ensure_prepared(spec)
    classes = sorted(p.name for p in (spec.root / spec.train_split).iterdir() if p.is_dir())
    pipe = build_tiny_pipeline(work / "pipe", [spec.prompt(c) for c in classes])
    save_random_guide(work / "guide.pth.tar", classes)
    expand_argv = ["--dataset", "digits", "--model", str(pipe), "--guide_ckpt", str(work / "guide.pth.tar"),
                   "--out", str(work / "out"), "--limit", "2", "--expand_ratio", "1", "--num_steps", "10",
                   "--guidance_step", "4", "--threads", "1"]
    trail, code = follow(expand_distdiff.main, expand_argv)
    if code:
        raise SystemExit(f"error: the expansion exited {code}")
    numbers = measure(trail, "expand_distdiff.py")
    if show_trail:
        print("\n".join(f"{f}  {name}" for f, name in trail))
    lines = len(Path(expand_distdiff.__file__).read_text().splitlines())
    print(f"argv from expand_distdiff.py:main enters {numbers['files']} files, returns {numbers['returns']} times "
          f"to a file it had left ({numbers['back_to_script']} of them to expand_distdiff.py); "
          f"expand_distdiff.py is {lines} lines")
    print("files:", ", ".join(sorted({f for f, _ in trail})))
    return 0


if __name__ == "__main__":
    run_cli(main)
