"""Numeric guards of the guidance's backward pass: loss scaling for half precision and a
per-item outcome (guided, non-finite, or an all-zero gradient), so that a vanished fp16 gradient
is counted and reported instead of silently leaving an unguided image."""
import torch

from distdiff.settings import GUIDED, NONFINITE, ZERO_GRADIENT
# Loss scales for half-precision backward passes, a ladder from the top: an O(1) energy spread
# over a 512-px image gives per-pixel gradients near 1e-6, below fp16's smallest normal number
# (6e-5), so unscaled they flush to zero. Rows whose scaled gradient overflows retry a rung lower.
HALF_LOSS_SCALES = (2.0 ** 16, 2.0 ** 8, 1.0)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def loss_scales(dtype):
    """The loss scales to try for a backward pass through modules of `dtype` (fp32: none)."""
    return HALF_LOSS_SCALES if dtype in HALF_DTYPES else (1.0,)


class LossScale:
    """The loss scale of one process's half-precision guidance passes, GradScaler-style.

    A pass starts at the current rung. Rows that overflow retry a rung lower, and the pass leaves
    the scale at the lowest rung a row needed, so an overflow costs one rerun of one batch, not
    one of every batch after it; after GROWTH_INTERVAL passes in a row without an overflow the
    scale climbs a rung. Rows non-finite at every rung do not lower it (their trouble is not
    overflow), and rows whose gradient vanished below the top rung retry at the top, since a
    lowered scale can underflow. Counts: rows whose gradient each scale gave (`rows_at`), rows
    retried (`retried`); `take_row_scales()` gives the smallest scale each row of the passes since
    its last call used.
    """

    GROWTH_INTERVAL = 8

    def __init__(self, ladder=HALF_LOSS_SCALES):
        self.ladder, self.rung, self.clean = tuple(ladder), 0, 0
        self.rows_at, self.retried = {scale: 0 for scale in self.ladder}, 0
        self._row_scales = None

    @property
    def scale(self):
        return self.ladder[self.rung]

    def record(self, row_rungs, status, retried):
        """Book one pass: the rung each row's result came from, its outcome, rows retried."""
        for rung, count in zip(*torch.unique(row_rungs.cpu(), return_counts=True)):
            self.rows_at[self.ladder[int(rung)]] += int(count)
        self.retried += retried
        needed = row_rungs[status != NONFINITE]
        deepest = int(needed.max()) if len(needed) else self.rung
        if deepest > self.rung:
            self.rung, self.clean = deepest, 0
        else:
            self.clean += 1
            if self.clean >= self.GROWTH_INTERVAL and self.rung > 0:
                self.rung, self.clean = self.rung - 1, 0
        scales = torch.tensor(self.ladder, dtype=torch.float64)[row_rungs.cpu()]
        same = self._row_scales is not None and len(self._row_scales) == len(scales)
        self._row_scales = torch.minimum(self._row_scales, scales) if same else scales

    def take_row_scales(self):
        """Per row, the smallest scale of the passes since the last call (None: no pass)."""
        scales, self._row_scales = self._row_scales, None
        return scales

    def counts(self):
        """{"rows_at_<scale>": n, "retried_rows": n, "scale_now": s} for reports."""
        return {**{f"rows_at_{scale:g}": n for scale, n in self.rows_at.items()}, "retried_rows": self.retried,
                "scale_now": self.scale}


def finite_rows(*tensors):
    """Bool [B]: True where every tensor row is finite."""
    ok = torch.ones(len(tensors[0]), dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
    return ok


def nonzero_rows(*tensors):
    """Bool [B]: True where some tensor has a non-zero entry in that row."""
    return torch.stack([t.reshape(len(t), -1).ne(0).any(dim=1) for t in tensors]).any(dim=0)


def guidance_status(values, grads):
    """Per-item outcome [B]: GUIDED, NONFINITE (energy or gradient NaN/inf) or ZERO_GRADIENT
    (every gradient entry exactly 0: underflowed, or an energy that does not depend on the input)."""
    status = torch.full((len(values),), GUIDED, dtype=torch.long, device=values.device)
    status[~nonzero_rows(*grads)] = ZERO_GRADIENT
    status[~finite_rows(values, *grads)] = NONFINITE
    return status


def _scaled_pass(energy_fn, inputs, scale):
    """(energy [B], fp32 gradients of scale * sum / scale, status [B]) at one loss scale."""
    with torch.enable_grad():
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        values = energy_fn(*leaves)
        grads = [g.float() / scale for g in torch.autograd.grad(values.sum() * scale, leaves)]
    values = values.detach()
    return values, grads, guidance_status(values, grads)


def scaled_grad(energy_fn, inputs, dtype, scales=None, loss_scale=None):
    """(energy [B], fp32 gradients of its sum w.r.t. `inputs`, status [B]) with loss scaling for
    half precision: the sum is multiplied by a power of two before the backward and the gradients
    divided by it in fp32 (exact in binary floating point), retrying the rows that overflowed at
    the next smaller scale. With `loss_scale` (a LossScale) half-precision passes start at its
    current rung and are booked there; `scales` overrides the ladder (and `loss_scale`): (1.0,) is
    the authors' unscaled backward, which studies/gpu_check.py compares."""
    adaptive = loss_scale is not None and scales is None and dtype in HALF_DTYPES
    ladder, first = (loss_scale.ladder, loss_scale.rung) if adaptive else (scales or loss_scales(dtype), 0)
    values, grads, status, rungs, retried = None, None, None, None, 0

    def take(rows, rung, new):  # the new pass's result for `rows`
        nonlocal values, grads, status
        new_values, new_grads, new_status = new
        values = torch.where(rows, new_values, values)
        grads = [torch.where(rows.view(-1, *[1] * (g.dim() - 1)), n, g) for g, n in zip(grads, new_grads)]
        status = torch.where(rows, new_status, status)
        rungs[rows] = rung

    for rung in range(first, len(ladder)):
        new = _scaled_pass(energy_fn, inputs, ladder[rung])
        if values is None:
            (values, grads, status), rungs = new, torch.full_like(new[2], rung)
        else:  # the rows that overflowed at the larger scale
            retry = status == NONFINITE
            retried += int(retry.sum())
            take(retry, rung, new)
        if not (status == NONFINITE).any():
            break
    if first > 0 and (status == ZERO_GRADIENT).any():  # vanished below the top rung: try the top
        retried += int((status == ZERO_GRADIENT).sum())
        new = _scaled_pass(energy_fn, inputs, ladder[0])
        take((status == ZERO_GRADIENT) & (new[2] == GUIDED), 0, new)
    if adaptive:
        loss_scale.record(rungs, status, retried)
    return values, grads, status


def keep_guided(new, fallback, status):
    """`new` where the item was guided, else the unguided `fallback`."""
    return torch.where((status == GUIDED).view(-1, *([1] * (new.dim() - 1))), new, fallback)
