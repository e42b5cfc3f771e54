"""DistDiff: distribution-aware data expansion with diffusion models (library code).

The top-level scripts parse arguments and call into this package with explicit values. Nothing
here reads ``sys.argv``, prints, or changes the process environment on import; progress goes
through ``logging`` and tqdm.
"""


class DistDiffError(RuntimeError):
    """A user-facing problem (bad input, missing files). Scripts print it as one line and exit 1."""
