"""Distribution-aware energy guidance (DistDiff, stage 3). The energy of a decoded image with guide
features f, for its class c, summed over the items of a batch (each item's step is its own):
    E = lambda_c * ||f - p_c|| + lambda_g * ||f - p_g*||,   p_g* = the most cosine-similar group of c.

`transform` guidance (the paper's algorithm), once at schedule index T - M: perturb the current
latent z per channel, z' = z * (1 + a) + b with a ~ U(0, 1), b ~ N(0, 1); run P look-ahead DDIM
steps from z' with autograd on, decoding each predicted clean latent x0 and scoring it with E
(averaged over the P steps); take one gradient step of size rho on (a, b); apply the transform to
z and project the result into an L-inf ball of radius r around z. Denoising continues from there.
Its parts run alone as the controls of docs/energy_or_noise.md: rho = 0 keeps the perturbation and
the projection (no backward), transform_start "identity" starts (a, b) at (0, 0).

`direct` guidance (the authors' `direct_guidance`), at each of the P schedule indices T - M ...
T - M + P - 1: one DDIM step from z_t gives z_{t-1} and the one-step x0; E of the decoded x0 is
differentiated with respect to z_t, and z_{t-1} moves by -rho times that gradient, with no
projection. Denoising continues from the guided z_{t-1}. Not DistDiff, the references of
docs/guidance_variants.md: `energy "classifier"` (E = the guide's cross-entropy for the item's
class) and `transform_point "landed"` (distdiff.variants).
"""
import math

import torch
import torch.nn.functional as F

from distdiff.numerics import keep_guided, scaled_grad
from distdiff.settings import GUIDED

def energy(features, class_protos, group_protos, group_mask, lambda_class, lambda_group):
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


def project(z_new, z, radius):
    """Clamp z_new into the L-inf ball of `radius` around z (no-op when radius is None)."""
    if radius is None:
        return z_new
    return torch.clamp(z_new, z - radius, z + radius)


def transform_step(z, lookahead_energy, a, b, step_size, radius, loss_scale=None):
    """One transform-guidance application; returns (new latent, status [B]).

    `lookahead_energy(z') -> [B]` runs the P-step look-ahead from the perturbed latent. a, b
    and the update are fp32 whatever the latent's dtype (a gradient step of 1e-4 on a half-
    precision a near 1 would round away); the perturbed latent is cast to the model's dtype.
    `loss_scale` (numerics.LossScale) carries the half-precision loss scale from pass to pass.
    """
    z32 = z.float()
    if step_size == 0:  # the perturbation alone: nothing to differentiate
        return project(z32 * (1 + a.float()) + b.float(), z32, radius).to(z.dtype), \
            torch.full((len(z),), GUIDED, dtype=torch.long, device=z.device)

    def energy_of(a, b):
        return lookahead_energy((z32 * (1 + a) + b).to(z.dtype))

    _, (grad_a, grad_b), status = scaled_grad(energy_of, [a.float(), b.float()], z.dtype, loss_scale=loss_scale)
    a, b = a.float() - step_size * grad_a, b.float() - step_size * grad_b
    guided = project(z32 * (1 + a) + b, z32, radius).to(z.dtype)
    return keep_guided(guided, z, status), status


def direct_step(z, step_energy, step_size, loss_scale=None):
    """One direct-guidance step from z_t; returns (guided z_{t-1}, unguided z_{t-1}, status [B]).

    `step_energy(z_t) -> (z_{t-1}, energy [B])` runs one DDIM step and scores its x0.
    """
    outputs = {}

    def energy_of(z_var):
        outputs["prev"], values = step_energy(z_var.to(z.dtype))
        return values

    _, (grad,), status = scaled_grad(energy_of, [z.float()], z.dtype, loss_scale=loss_scale)
    prev = outputs["prev"].detach()
    guided = (prev.float() - step_size * grad).to(prev.dtype)
    return keep_guided(guided, prev, status), prev, status
