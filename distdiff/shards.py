"""The expansion work list, its split into shards, atomic image writes and manifests.

Items are (source index i, copy k), ordered by source then copy. They are cut into fixed
blocks of BLOCK_ITEMS consecutive items and block b belongs to shard b % N, whatever the batch
size, so shards running with different batch sizes (`--batch_size auto` depends on each GPU's
free memory) still split the work exactly. A shard samples its items in batches cut from its
own item list; a batch is always sampled whole. So with the same batch size every output byte
is the same after any interruption, and with a batch size that divides BLOCK_ITEMS also for any
shard count; other batch sizes change images only at float-rounding level (batched kernels
round differently), which is why the batch size never locks an output folder.
"""
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distdiff import DistDiffError
from distdiff.fileio import atomic_write_json, atomic_write_text
from distdiff.runs import setup_logging
from distdiff.settings import LOST


@dataclass(frozen=True)
class WorkItem:
    """One output image: copy `k` of source `index` (position in the sorted training split), at
    `position` in the expansion's work list."""
    index: int
    k: int
    label: int
    source: str
    position: int

    def output_path(self, out_dir, class_names):
        """<out>/<class>/<source stem>_expand_<k>.png"""
        return Path(out_dir) / class_names[self.label] / f"{Path(self.source).stem}_expand_{self.k}.png"

    @property
    def source_key(self):
        """The source as manifests name it: <class>/<file>, relative to the split dir (portable)."""
        return str(Path(self.source).relative_to(Path(self.source).parents[1]))


def item_seed(seed, index, k):
    """A 63-bit seed from (seed, source index, copy k), independent of shards and batches."""
    digest = hashlib.sha256(f"distdiff:{seed}:{index}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def select_sources(samples, limit=None):
    """Indices of the sources to expand; `limit` keeps the first n in class-interleaved order
    (so a quick run still covers every class) while items keep their full-split index."""
    indices = list(range(len(samples)))
    if limit is None or limit >= len(indices):
        return indices
    rank, seen = {}, {}
    for i, (_, label) in enumerate(samples):
        rank[i] = seen.get(label, 0)
        seen[label] = rank[i] + 1
    interleaved = sorted(indices, key=lambda i: (rank[i], samples[i][1], i))
    return sorted(interleaved[:limit])


def work_items(samples, ratio, limit=None, first_copy=0):
    """All items in canonical order: by source index, then copy k (k >= first_copy)."""
    pairs = [(i, k) for i in select_sources(samples, limit) for k in range(first_copy, ratio)]
    return [WorkItem(i, k, samples[i][1], samples[i][0], position) for position, (i, k) in enumerate(pairs)]


BLOCK_ITEMS = 8  # the unit of shard ownership (and the CPU batch size, so CPU runs keep their bytes)


def blocks(items, size=BLOCK_ITEMS):
    """Consecutive fixed-size blocks of the work list."""
    return [items[s:s + size] for s in range(0, len(items), size)]


def shard_blocks(all_blocks, split, total_split):
    """The blocks owned by shard `split` of `total_split` (round robin), with block ids."""
    return [(b, block) for b, block in enumerate(all_blocks) if b % total_split == split]


def shard_batches(items, split, total_split, batch_size):
    """The batches of shard `split`: its owned items, in order, cut into `batch_size` pieces, each
    with the id of the block its first item belongs to."""
    mine = [(b, item) for b, block in shard_blocks(blocks(items), split, total_split) for item in block]
    return [(mine[s][0], [item for _, item in mine[s:s + batch_size]]) for s in range(0, len(mine), batch_size)]


def resolve_shard(split=None, total_split=None, env=None):
    """(split, total) from the flags, else RANK/WORLD_SIZE, else SLURM array variables, else (0, 1).

    The environment is read directly: accelerate's PartialState would also start a process group,
    which independent shards do not need (they never communicate)."""
    env = os.environ if env is None else env
    if split is None and total_split is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            split, total_split = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            split = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            total_split = int(env["SLURM_ARRAY_TASK_COUNT"])
    split = 0 if split is None else split
    total_split = 1 if total_split is None else total_split
    if total_split < 1 or not 0 <= split < total_split:
        raise DistDiffError(f"--split {split} must be in [0, --total_split {total_split})")
    return split, total_split


class BackgroundWriter:
    """Runs write jobs on one thread so PNG encoding overlaps with sampling.

    At most `max_pending` jobs wait (bounded memory); a failed job re-raises in the sampling
    thread at the next submit or on exit. A kill loses only unwritten images, which are missing
    files and so are regenerated on rerun (every write is atomic).
    """

    def __init__(self, max_pending=4):
        self.max_pending, self.pending = max_pending, []

    def __enter__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-writer")
        return self

    def submit(self, fn, *args):
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()

    def __exit__(self, exc_type, *exc):
        # On an error in the sampler, finish what is queued anyway: those images are complete.
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)
        return False


def append_manifest(path, records):
    """Append JSON lines and fsync, before the images they describe are written."""
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_manifests(out_dir, paths=None):
    """All manifest records (of `paths`, default every shard's manifest), last one per (source, k)
    winning; torn lines are skipped."""
    records = {}
    for path in paths if paths is not None else sorted(Path(out_dir).glob("manifest_shard*.jsonl")):
        if not Path(path).is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill; its item is recomputed on rerun
            records[(record["source"], record["k"])] = record
    return list(records.values())


def missing_items(items, out_dir, class_names):
    """Items whose output file does not exist yet."""
    return [it for it in items if not it.output_path(out_dir, class_names).is_file()]


def verify_report(items, out_dir, class_names, total_split):
    """(missing count, per-class missing counts, shard ids that own missing items)."""
    missing = set(missing_items(items, out_dir, class_names))
    per_class, shards = {}, set()
    for b, block in enumerate(blocks(items)):
        for item in block:
            if item in missing:
                per_class[class_names[item.label]] = per_class.get(class_names[item.label], 0) + 1
                shards.add(b % total_split)
    return len(missing), per_class, sorted(shards)


# ---------------------------------------------------------------------------
# Shard records and the completeness check that training relies on
# ---------------------------------------------------------------------------

# The option strings of --split and --total_split (distdiff.config.EXPAND_SPELLINGS adds the
# accelerate-style names), so a recorded command line can be re-aimed at another shard.
SPLIT_FLAGS = ("--split", "--shard_id", "--shard-id")
TOTAL_FLAGS = ("--total_split", "--total-split", "--num_shards", "--num-shards")


def open_output(out_dir, settings, split, generation_keys):
    """args.yaml (or the refusal of an output dir made with other settings), then the shard's log."""
    check_or_write_args(out_dir, settings, generation_keys)
    setup_logging(out_dir, filename="log.txt" if split == 0 else f"log_shard{split}.txt")


def check_or_write_args(out_dir, resolved, generation_keys):
    """Write <out>/args.yaml (the resolved settings dict), or refuse when it records other values
    of `generation_keys` (the settings that change the images; execution settings such as the
    batch size change them at float-rounding level at most, so a rerun may change those freely)."""
    path = Path(out_dir) / "args.yaml"
    if path.is_file():
        previous = yaml.safe_load(path.read_text()) or {}
        changed = [k for k in generation_keys if k in previous and previous[k] != resolved.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {previous[k]!r} -> {resolved.get(k)!r}" for k in changed[:4])
            raise DistDiffError(f"{out_dir} was generated with other settings ({diffs}); "
                                "use a new --out to keep runs separate")
    shared = {k: v for k, v in resolved.items() if k not in ("split", "total_split", "verify")}
    atomic_write_text(path, yaml.safe_dump(shared, sort_keys=True))


def shard_record_path(out_dir, split):
    """<out>/shard<i>.json: one file per shard (shards never write each other's), at the top
    level, where an ImageFolder does not look for classes."""
    return Path(out_dir) / f"shard{split}.json"


def write_shard_record(out_dir, split, total_split, items, argv, status, **extra):
    """Record that shard `split` of `total_split` (owning `items` items, started with expand_distdiff.py
    `argv`) is "running" or "done", with `extra` numbers; atomic, so a kill leaves the previous record."""
    path = shard_record_path(out_dir, split)
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    started = (read_json(path) or {}).get("started", now) if status == "done" else now
    record = {"split": split, "total_split": total_split, "items": items, "argv": [str(a) for a in argv],
              "status": status, "started": started, **({"finished": now} if status == "done" else {}), **extra}
    atomic_write_json(path, record)
    return record


def read_json(path):
    """A JSON file's content, or None where it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def shard_command(argv, split, total_split):
    """The recorded expand_distdiff.py command line `argv` aimed at shard `split` of `total_split`."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in SPLIT_FLAGS + TOTAL_FLAGS:
            skip = "=" not in token
            continue
        kept.append(token)
    return ["python", "expand_distdiff.py", *kept, "--split", str(split), "--total_split", str(total_split)]


@dataclass
class ExpansionCheck:
    """What a training run is about to read from an expanded folder."""
    folder: Path
    verified: bool                   # written by expand_distdiff.py: its args.yaml and manifests exist
    expected: int | None = None      # items its settings (args.yaml) call for
    written: int = 0                 # of those, with both the PNG and its manifest line present
    unguided: int = 0                # written items whose guidance was lost (kept unguided, marked)
    total_split: int | None = None   # the shard count recorded by its shards (None: not recorded)
    owners: dict = field(default_factory=dict)  # shard id owning missing items -> its state, in words
    command: list | None = None      # a recorded command line, aimed at the first such shard

    @property
    def complete(self):
        return self.verified and self.written == self.expected

    @property
    def fraction(self):
        return None if not self.expected else self.written / self.expected

    def summary(self):
        """For args.yaml."""
        return {"dir": str(self.folder), "verified": self.verified, "expected": self.expected,
                "written": self.written, "fraction": None if self.fraction is None else round(self.fraction, 6),
                "unguided": self.unguided}

    def problem(self):
        """One sentence on why this folder is not a complete expansion (None when it is)."""
        if self.complete:
            return None
        if not self.verified:
            return (f"expanded set {self.folder} was not written by expand_distdiff.py (no args.yaml and "
                    "manifest_shard*.jsonl), so nothing says it is complete")
        line = (f"expansion {self.folder} is incomplete: {self.written} of {self.expected} images written "
                f"({100 * self.fraction:.1f} %)")
        if self.total_split is None:
            return line + "; rerun expand_distdiff.py with the flags it was started with (it resumes), and " \
                          "`--verify --total_split N` lists the shards that own the missing images"
        states = "; ".join(f"{', '.join(map(str, ids))}: {state}" for state, ids in _by_state(self.owners))
        command = " ".join(self.command[:-4] + ["--split", "<i>", "--total_split", str(self.total_split)])
        running = any(state.startswith("still running") for state in self.owners.values())
        return (f"{line}; shard(s) {', '.join(map(str, self.owners))} of {self.total_split} unfinished "
                f"({states}); {'wait for the running ones, then ' if running else ''}complete them with "
                f"`{command}` for each i")


def _by_state(owners):
    """[(state, [shard ids])] in the order the states first appear."""
    groups = {}
    for split, state in owners.items():
        groups.setdefault(state, []).append(split)
    return list(groups.items())


def check_expansion(folder, data_dir=None):
    """Compare an expanded folder with what its own settings call for: every item of its
    args.yaml (dataset, --expand_ratio, --limit, --first_image_index) needs its PNG and its
    manifest line. Reads file names and manifests only (no image is decoded)."""
    from distdiff import folders, registry

    folder = Path(folder)
    settings_path = folder / "args.yaml"
    if not settings_path.is_file() or not any(folder.glob("manifest_shard*.jsonl")):
        return ExpansionCheck(folder, verified=False)
    settings = yaml.safe_load(settings_path.read_text()) or {}
    spec = registry.get_dataset(settings["dataset"], data_dir)
    sources = folders.list_split(spec, spec.train_split)
    items = work_items(sources.samples, settings["expand_ratio"], settings.get("limit"),
                       settings.get("first_image_index") or 0)
    records = {(r["source"], r["k"]): r for r in read_manifests(folder)}
    present = [it for it in items
               if (it.source_key, it.k) in records and it.output_path(folder, sources.classes).is_file()]
    check = ExpansionCheck(folder, verified=True, expected=len(items), written=len(present),
                           unguided=sum(records[it.source_key, it.k].get("guidance") in LOST
                                        for it in present))
    shard_records = [r for r in map(read_json, sorted(folder.glob("shard*.json"))) if r]
    if check.complete or not shard_records:
        return check
    latest = max(shard_records, key=lambda r: r.get("started") or "")
    total = check.total_split = int(latest["total_split"])
    states = {r["split"]: r["status"] for r in shard_records if r.get("total_split") == total}
    present_set = set(present)
    owners = sorted({b % total for b, block in enumerate(blocks(items)) for it in block if it not in present_set})
    check.owners = {s: ("still running or interrupted" if states.get(s) == "running" else
                            "done, images deleted since" if states.get(s) == "done" else "never started")
                        for s in owners}
    check.command = shard_command(latest["argv"], owners[0], total)
    return check
