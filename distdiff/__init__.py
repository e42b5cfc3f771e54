"""DistDiff: distribution-aware data expansion with diffusion models (library code).

The top-level scripts parse arguments and call into this package. Nothing here reads
``sys.argv`` or prints; progress goes through ``logging`` and tqdm.
"""


class DistDiffError(RuntimeError):
    """A user-facing problem (bad input, missing files). Scripts print it as one line and exit 2."""
