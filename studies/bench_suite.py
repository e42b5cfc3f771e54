"""Where the test suite's time goes: CPU seconds per background job and per program (CPU).

    python studies/bench_suite.py                     # bash scripts/test.sh, everything (what CI runs)
    python studies/bench_suite.py -- tests/test_chain.py   # arguments after -- go to scripts/test.sh

Runs `bash scripts/test.sh` and reads /proc every --interval seconds for the CPU time of each of
its descendant processes (user + system, all threads). A process is charged to the job it runs
under: one of the background rehearsals that tests/conftest.py starts (`tests/jobs/*.py`,
`studies/gpu_check.py`), else the pytest process. The totals are sampled, so a process that ends
between two reads loses at most one interval; the command's whole CPU time (getrusage of the
child) is printed beside them. Linux only. The suite's budget (docs/results.md): 240 s of pytest
on 2 cores, which leaves about 480 CPU-s; each Python process that loads torch pays 4-5 s of
imports, which is why the programs are counted. This machine's speed drifts by up to 2x within an
hour, so before and after the suite it times --calibrate fresh `import torch, torchvision`
processes (their median CPU seconds), and gives the suite's CPU in that unit as well: that figure
compares across hours, raw seconds only back to back.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # every entry point: OpenMP threads that sleep, not spin

import resource
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from distdiff.domains import Number, OneLineParser
from distdiff.fileio import atomic_write_json
from distdiff.options import run_cli

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
JOB_MARKERS = ("tests/jobs/", "studies/gpu_check.py")  # the background rehearsals' programs
HEAVY_S = 1.0  # a process above this many CPU seconds counts as heavy (it loaded torch, as a rule)
CALIBRATION = [sys.executable, "-c", "import torch, torchvision"]


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def calibrate(command, times):
    """Median CPU seconds of `times` runs of `command` (with the suite's bytecode cache)."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(REPO / ".venv" / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    seconds = []
    for _ in range(times):
        before = children_cpu()
        subprocess.run(command, cwd=REPO, env=env, check=True)
        seconds.append(children_cpu() - before)
    return statistics.median(seconds)


def read_stat(pid):
    """(parent pid, CPU seconds, start tick) of a live process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in (...) may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[19])


def read_cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def program(cmdline):
    """The program a command line runs: the first .py or .sh argument (its path inside the
    repository), `-m <module>`, `-c`, or the executable's name."""
    words = cmdline.split()
    for i, word in enumerate(words[1:], 1):
        if word.endswith((".py", ".sh")):
            path = Path(word)
            return str(path.relative_to(REPO)) if path.is_absolute() and REPO in path.parents else word
        if word == "-m" and i + 1 < len(words):
            return f"-m {words[i + 1]}"
        if word == "-c":
            return "-c"
    return Path(words[0]).name if words else "?"


class Sampler:
    """Every descendant of `root` seen so far: {(pid, start tick): record}. The start tick keeps a
    reused pid apart from the process that had it before."""

    def __init__(self, root):
        self.root, self.seen = root, {}

    def poll(self):
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = read_stat(int(entry.name))
                if stat:
                    stats[int(entry.name)] = stat
        keys = {pid: (pid, stat[2]) for pid, stat in stats.items()}
        for pid, (ppid, cpu, _) in stats.items():
            key = keys[pid]
            record = self.seen.get(key)
            if record is None:
                parent = self.seen.get(keys.get(ppid))
                if ppid != self.root and parent is None:
                    continue  # not ours (or its parent ended unseen: rare at short intervals)
                record = self.seen[key] = {"key": key, "parent": parent["key"] if parent else None, "cmdline": "",
                                           "cpu_s": 0.0}
            record["cpu_s"] = max(record["cpu_s"], cpu)
            # read again each time: a process seen between its fork and its exec still shows its parent's
            record["cmdline"] = read_cmdline(pid) or record["cmdline"]


def job_of(record, seen):
    """The background rehearsal a process runs under, else "pytest (in-process tests)"."""
    while record is not None:
        if any(marker in record["cmdline"] for marker in JOB_MARKERS):
            return program(record["cmdline"])
        record = seen.get(record["parent"])
    return "pytest (in-process tests)"


def summarise(seen):
    by_job, by_program, count, heavy = defaultdict(float), defaultdict(float), Counter(), Counter()
    for record in seen.values():
        name, cpu = program(record["cmdline"]), record["cpu_s"]
        by_job[job_of(record, seen)] += cpu
        by_program[name] += cpu
        count[name] += 1
        heavy[name] += cpu >= HEAVY_S
    programs = {name: {"cpu_s": round(cpu, 1), "processes": count[name], "heavy": heavy[name]}
                for name, cpu in sorted(by_program.items(), key=lambda kv: -kv[1])}
    return {name: round(cpu, 1) for name, cpu in sorted(by_job.items(), key=lambda kv: -kv[1])}, programs


def heavy_processes(seen):
    """Every process above HEAVY_S, costliest first: its job, CPU seconds and command line."""
    rows = [{"job": job_of(r, seen), "cpu_s": round(r["cpu_s"], 1), "cmdline": r["cmdline"][:400]}
            for r in seen.values() if r["cpu_s"] >= HEAVY_S]
    return sorted(rows, key=lambda row: -row["cpu_s"])


def get_parser():
    p = OneLineParser(description=__doc__)
    p.add_argument("--interval", type=Number(float, 0, low_open=True), default=0.1,
                   help="seconds between two reads of /proc")
    p.add_argument("--out", default="bench/suite.json", help="the JSON report")
    p.add_argument("--calibrate", type=Number(int, 0), default=3,
                   help="fresh `import torch, torchvision` processes timed before and after the suite (0: none)")
    p.add_argument("test_args", nargs="*", help="arguments for scripts/test.sh (after --)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not Path("/proc/self/stat").is_file():
        get_parser().error("this benchmark reads /proc: Linux only")
    unit_before = calibrate(CALIBRATION, args.calibrate) if args.calibrate else None
    start, cpu_before = time.time(), children_cpu()
    proc = subprocess.Popen(["bash", "scripts/test.sh", *args.test_args], cwd=REPO)
    sampler = Sampler(proc.pid)
    while proc.poll() is None:
        sampler.poll()
        time.sleep(args.interval)
    wall = time.time() - start
    total = children_cpu() - cpu_before
    unit_after = calibrate(CALIBRATION, args.calibrate) if args.calibrate else None
    jobs, programs = summarise(sampler.seen)
    sampled = sum(r["cpu_s"] for r in sampler.seen.values())
    report = {"command": ["bash", "scripts/test.sh", *args.test_args], "exit_code": proc.returncode,
              "wall_s": round(wall, 1), "cpu_s": round(total, 1), "cpu_s_sampled": round(sampled, 1),
              "processes": len(sampler.seen), "jobs": jobs, "programs": programs,
              "heavy_processes": heavy_processes(sampler.seen),
              "calibration": {"command": CALIBRATION[1:], "cpu_s_before": unit_before, "cpu_s_after": unit_after}}
    atomic_write_json(args.out, report)
    print(f"\nexit {proc.returncode}; {wall:.0f} s wall, {total:.0f} CPU-s ({sampled:.0f} sampled in "
          f"{len(sampler.seen)} processes, {total / max(wall, 1e-9):.2f} cores busy on average)")
    if args.calibrate:
        unit = (unit_before + unit_after) / 2
        print(f"calibration: `import torch, torchvision` took {unit_before:.2f} CPU-s before the suite and "
              f"{unit_after:.2f} after; the suite's CPU is {total / unit:.0f} such imports")
    print("\n| job | CPU-s |\n|---|---|")
    for name, cpu in jobs.items():
        print(f"| {name} | {cpu:.0f} |")
    print(f"\n| program | CPU-s | processes | over {HEAVY_S:g} CPU-s |\n|---|---|---|---|")
    for name, row in programs.items():
        if row["cpu_s"] >= HEAVY_S:
            print(f"| {name} | {row['cpu_s']:.0f} | {row['processes']} | {row['heavy']} |")
    print(f"\nreport: {args.out}")
    return proc.returncode


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
