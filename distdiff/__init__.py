"""DistDiff: distribution-aware data expansion with diffusion models (library code).

The top-level scripts parse arguments and call into this package. Nothing here reads
``sys.argv`` or prints; progress goes through ``logging`` and tqdm.
"""
import os

# OpenMP threads that spin while waiting made runs sharing the 2 CPU cores 2-10x slower (an
# expansion shard measured 0.4 vs 5.8 images/s); passive waiting costs nothing when alone.
# It must be set before torch loads OpenMP, and every script imports this package first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class DistDiffError(RuntimeError):
    """A user-facing problem (bad input, missing files). Scripts print it as one line and exit 2."""
