"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never a
torn one. No torch import at module level, so parse_logs.py stays fast."""
import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same directory; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temps(path):
    """Delete the temp files a killed writer of `path` left behind (SIGKILL skips `finally`).
    Call it only where this process is the sole writer of `path`: a live writer's temp would go."""
    path = Path(path)
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)


def remove_stale_temps_in(directory):
    """remove_stale_temps for every file of a directory that one process owns (a run dir)."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path, text):
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj):
    """Write JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, path):
    """torch.save to `path` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_image(image, path):
    """PNG write via temp file + os.replace: a finished file is always a whole image."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
