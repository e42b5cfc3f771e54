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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from distdiff import DistDiffError


@dataclass(frozen=True)
class WorkItem:
    """One output image: copy `k` of source `index` (position in the sorted training split)."""
    index: int
    k: int
    label: int
    source: str

    def output_path(self, out_dir, class_names):
        """<out>/<class>/<source stem>_expand_<k>.png"""
        return Path(out_dir) / class_names[self.label] / f"{Path(self.source).stem}_expand_{self.k}.png"


def item_seed(seed, index, k):
    """A 63-bit seed from (seed, source index, copy k), independent of shards and batches."""
    digest = hashlib.sha256(f"distdiff:{seed}:{index}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def item_generator(seed, index, k):
    """A CPU generator for one item (CPU draws are identical on every machine)."""
    return torch.Generator(device="cpu").manual_seed(item_seed(seed, index, k))


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
    return [WorkItem(i, k, samples[i][1], samples[i][0])
            for i in select_sources(samples, limit) for k in range(first_copy, ratio)]


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


def read_manifests(out_dir):
    """All manifest records, last one per (source, k) winning; torn lines are skipped."""
    records = {}
    for path in sorted(Path(out_dir).glob("manifest_shard*.jsonl")):
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
