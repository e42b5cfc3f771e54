"""Small file and process helpers with no torch import (parse_logs.py stays fast).

Atomic writes: a kill at any moment leaves either the old file or the new one, never a torn one.
"""
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import yaml

from distdiff import DistDiffError

logger = logging.getLogger("distdiff")


def load_yaml_config(path):
    """Read a YAML config into a dict (empty file -> {})."""
    path = Path(path)
    if not path.is_file():
        raise DistDiffError(f"config file {path} not found")
    with open(path) as f:
        return yaml.safe_load(f) or {}


# ---------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same directory; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def atomic_write_json(path, obj):
    """Write JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_args(run_dir, args, extra=None):
    """Write the fully resolved config to <run_dir>/args.yaml (atomically)."""
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}
    resolved.update(extra or {})
    atomic_write_text(Path(run_dir) / "args.yaml", yaml.safe_dump(resolved, sort_keys=True))


def setup_logging(run_dir=None, filename="log.txt"):
    """Log to stdout and, given a run dir, to <run_dir>/<filename>."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / filename))
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logger


def run_cli(main, args):
    """Call main(args); a DistDiffError ends the process with one 'error: ...' line, exit 1."""
    try:
        return main(args)
    except DistDiffError as err:
        sys.exit(f"error: {err}")
