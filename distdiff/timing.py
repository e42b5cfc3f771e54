"""Named stages of the sampler, for torch.profiler and for the benchmark's own stage timer.

`stage(name)` labels a block for torch.profiler (record_function) and, inside
`measure_stages()`, adds its wall time (CUDA-synchronised) to a per-name total. Nested stages
overlap: a look-ahead UNet call counts in `lookahead_unet` and in `guidance_step`.
"""
import contextlib
import time
from collections import defaultdict

import torch
from torch.profiler import record_function

_totals = None


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def stage(name):
    """Label a block; time it when a measure_stages() block is open."""
    with record_function(name):
        if _totals is None:
            yield
            return
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            _totals[name] += time.perf_counter() - start


@contextlib.contextmanager
def measure_stages():
    """Yield a dict {stage: seconds} that fills while the block runs."""
    global _totals
    previous, _totals = _totals, defaultdict(float)
    try:
        yield _totals
    finally:
        _totals = previous
