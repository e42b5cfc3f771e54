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

from distdiff.timing import stage

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
    decode_scale: float = 1.0        # benchmark knob: decode the look-ahead x0 from a latent resized by this
                                     # factor (tried as --lookahead_decode_scale 0.5 and dropped, docs/performance.md)
    record_energy: bool = True       # measure the energy with and without guidance (extra passes)

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


def finite_rows(*tensors):
    """Bool [B]: True where every tensor row is finite."""
    ok = torch.ones(len(tensors[0]), dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
    return ok


def project(z_new, z, radius):
    """Clamp z_new into the L-inf ball of `radius` around z (no-op when radius is None)."""
    if radius is None:
        return z_new
    return torch.minimum(torch.maximum(z_new, z - radius), z + radius)


def keep_finite(new, fallback, ok):
    """`new` where `ok`, else the unguided `fallback` (items whose energy or gradient was NaN/inf)."""
    return torch.where(ok.view(-1, *([1] * (new.dim() - 1))), new, fallback)


def transform_step(z, lookahead_energy, a, b, step_size, radius):
    """One transform-guidance application; returns (new latent, finite mask [B]).

    `lookahead_energy(z') -> [B]` runs the P-step look-ahead from the perturbed latent.
    """
    with torch.enable_grad():
        a = a.detach().clone().requires_grad_(True)
        b = b.detach().clone().requires_grad_(True)
        values = lookahead_energy(z * (1 + a) + b)
        with stage("guidance_backward"):
            grad_a, grad_b = torch.autograd.grad(values.sum(), [a, b])
    a, b = a - step_size * grad_a, b - step_size * grad_b
    ok = finite_rows(values, grad_a, grad_b)
    return keep_finite(project((z * (1 + a) + b).detach(), z, radius), z, ok), ok


def direct_step(z, step_energy, step_size):
    """One direct-guidance step from z_t; returns (guided z_{t-1}, unguided z_{t-1}, finite mask).

    `step_energy(z_t) -> (z_{t-1}, energy [B])` runs one DDIM step and scores its x0.
    """
    with torch.enable_grad():
        z_var = z.detach().clone().requires_grad_(True)
        prev, values = step_energy(z_var)
        with stage("guidance_backward"):
            (grad,) = torch.autograd.grad(values.sum(), [z_var])
    prev = prev.detach()
    ok = finite_rows(values, grad)
    return keep_finite(prev - step_size * grad, prev, ok), prev, ok
