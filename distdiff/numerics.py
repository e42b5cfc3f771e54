"""Numeric guards of the guidance's backward pass: loss scaling for half precision and a
per-item outcome (guided, non-finite, or an all-zero gradient), so that a vanished fp16 gradient
is counted and reported instead of silently leaving an unguided image."""
import torch

# Per-item guidance outcome codes (the manifest spells them out with GUIDANCE_STATUS).
GUIDED, NONFINITE, ZERO_GRADIENT = 0, 1, 2
GUIDANCE_STATUS = {GUIDED: "guided", NONFINITE: "nonfinite", ZERO_GRADIENT: "zero_gradient"}
# Loss scales tried in turn for half-precision backward passes: an O(1) energy spread over a
# 512-px image gives per-pixel gradients near 1e-6, below fp16's smallest normal number (6e-5),
# so unscaled they flush to zero. Rows whose scaled gradient overflows retry at the next scale.
HALF_LOSS_SCALES = (2.0 ** 16, 2.0 ** 8, 1.0)


def loss_scales(dtype):
    """The loss scales to try for a backward pass through modules of `dtype` (fp32: none)."""
    return HALF_LOSS_SCALES if dtype in (torch.float16, torch.bfloat16) else (1.0,)


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


def scaled_grad(energy_fn, inputs, dtype, scales=None):
    """(energy [B], fp32 gradients of its sum w.r.t. `inputs`, status [B]) with loss scaling for
    half precision: the sum is multiplied by a power of two before the backward and the gradients
    divided by it in fp32 (exact in binary floating point), retrying the rows that overflowed at
    the next smaller scale. `scales` overrides loss_scales(dtype); (1.0,) is the authors' unscaled
    backward, which scripts/gpu_check.py compares."""
    values, grads, status = None, None, None
    for scale in scales or loss_scales(dtype):
        with torch.enable_grad():
            leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
            new_values = energy_fn(*leaves)
            new_grads = [g.float() / scale for g in torch.autograd.grad(new_values.sum() * scale, leaves)]
        new_status = guidance_status(new_values.detach(), new_grads)
        if values is None:
            values, grads, status = new_values.detach(), new_grads, new_status
        else:  # keep the new scale's result for the rows that overflowed at the larger one
            retry = status == NONFINITE
            values = torch.where(retry, new_values.detach(), values)
            grads = [torch.where(retry.view(-1, *[1] * (g.dim() - 1)), n, g) for g, n in zip(grads, new_grads)]
            status = torch.where(retry, new_status, status)
        if not (status == NONFINITE).any():
            break
    return values, grads, status


def keep_guided(new, fallback, status):
    """`new` where the item was guided, else the unguided `fallback`."""
    return torch.where((status == GUIDED).view(-1, *([1] * (new.dim() - 1))), new, fallback)
