"""Distribution-aware energy guidance (DistDiff, stage 3).

The energy of a decoded image with guide features f, for its class c,

    E = lambda_c * ||f - p_c|| + lambda_g * ||f - p_g*||,   p_g* = the most cosine-similar group of c,

is summed over the items of a batch (each item's step is its own, whatever the batch size).

`transform` guidance (the paper's algorithm), once at schedule index T - M: perturb the current
latent z per channel, z' = z * (1 + a) + b with a ~ U(0, 1), b ~ N(0, 1); run P look-ahead DDIM
steps from z' with autograd on, decoding each predicted clean latent x0 and scoring it with E
(averaged over the P steps); take one gradient step of size rho on (a, b); apply the transform to
z and project the result into an L-inf ball of radius r around z. Denoising continues from there.

`direct` guidance (the authors' `direct_guidance`), at each of the P schedule indices T - M ...
T - M + P - 1: one DDIM step from z_t gives z_{t-1} and the one-step x0; E of the decoded x0 is
differentiated with respect to z_t, and z_{t-1} moves by -rho times that gradient, with no
projection. Denoising continues from the guided z_{t-1}.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GUIDANCE_MODES = ("transform", "direct", "none")


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance hyper-parameters; the defaults are the paper's (and the project's choices)."""
    mode: str = "transform"
    guidance_step: int = 20          # M: guidance starts at schedule index T - M
    lookahead_steps: int = 2         # P: look-ahead steps (transform) or guided steps (direct)
    step_size: float = 10.0          # rho
    radius: float | None = 0.2       # transform: L-inf projection radius; None disables it
    lambda_class: float = 1.0
    lambda_group: float = 1.0
    normalize_features: bool = True  # L2-normalise f before the energy (the prototypes are unit vectors)
    renormalize_prototypes: bool = True  # unit prototypes: rescale the class and group means to norm 1
    repeats: int = 1                 # transform: number of applications (the paper: once)
    interval: int = 1                # transform: denoising steps between applications

    def indices(self, num_steps):
        """Indices into the full timestep schedule where guidance acts."""
        first = num_steps - self.guidance_step
        if self.mode == "none":
            return []
        if self.mode == "direct":
            return [first + p for p in range(self.lookahead_steps)]
        return [first + j * self.interval for j in range(self.repeats)]

    def last_allowed_index(self, num_steps):
        """A transform look-ahead needs P steps after its index; a direct step needs one."""
        return num_steps - (self.lookahead_steps if self.mode == "transform" else 1)


def energy(features, class_protos, group_protos, group_mask, lambda_class=1.0, lambda_group=1.0):
    """Per-item energy [B] against the item's class prototype and its nearest group prototype.

    features [B, D]; class_protos [B, D]; group_protos [B, K, D]; group_mask [B, K] (bool).
    """
    class_term = (features - class_protos).norm(dim=1)
    cosine = F.cosine_similarity(features[:, None, :], group_protos, dim=2)
    cosine = cosine.masked_fill(~group_mask, -math.inf)
    nearest = group_protos[torch.arange(len(features), device=features.device), cosine.argmax(1)]
    group_term = (features - nearest).norm(dim=1)
    return lambda_class * class_term + lambda_group * group_term


def unit_prototypes(prototypes):
    """Class and group prototypes rescaled to unit norm (masked, all-zero groups stay zero)."""
    out = dict(prototypes)
    out["class_protos"] = F.normalize(prototypes["class_protos"], dim=-1)
    out["group_protos"] = F.normalize(prototypes["group_protos"], dim=-1)
    return out


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


def project(z_new, z, radius):
    """Clamp z_new into the L-inf ball of `radius` around z (no-op when radius is None)."""
    if radius is None:
        return z_new
    return torch.clamp(z_new, z - radius, z + radius)


def keep_guided(new, fallback, status):
    """`new` where the item was guided, else the unguided `fallback`."""
    return torch.where((status == GUIDED).view(-1, *([1] * (new.dim() - 1))), new, fallback)


def transform_step(z, lookahead_energy, a, b, step_size, radius):
    """One transform-guidance application; returns (new latent, status [B]).

    `lookahead_energy(z') -> [B]` runs the P-step look-ahead from the perturbed latent. a, b
    and the update are fp32 whatever the latent's dtype (a gradient step of 1e-4 on a half-
    precision a near 1 would round away); the perturbed latent is cast to the model's dtype.
    """
    z32 = z.float()

    def energy_of(a, b):
        return lookahead_energy((z32 * (1 + a) + b).to(z.dtype))

    _, (grad_a, grad_b), status = scaled_grad(energy_of, [a.float(), b.float()], z.dtype)
    a, b = a.float() - step_size * grad_a, b.float() - step_size * grad_b
    guided = project(z32 * (1 + a) + b, z32, radius).to(z.dtype)
    return keep_guided(guided, z, status), status


def direct_step(z, step_energy, step_size):
    """One direct-guidance step from z_t; returns (guided z_{t-1}, unguided z_{t-1}, status [B]).

    `step_energy(z_t) -> (z_{t-1}, energy [B])` runs one DDIM step and scores its x0.
    """
    outputs = {}

    def energy_of(z_var):
        outputs["prev"], values = step_energy(z_var.to(z.dtype))
        return values

    _, (grad,), status = scaled_grad(energy_of, [z.float()], z.dtype)
    prev = outputs["prev"].detach()
    guided = (prev.float() - step_size * grad).to(prev.dtype)
    return keep_guided(guided, prev, status), prev, status
