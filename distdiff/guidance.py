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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distdiff import DistDiffError
from distdiff.numerics import GUIDED, keep_guided, scaled_grad

GUIDANCE_MODES = ("transform", "direct", "none")
TRANSFORM_STARTS = ("random", "identity")
ENERGIES, TRANSFORM_POINTS = ("prototype", "classifier"), ("unclamped", "landed")


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance hyper-parameters; the defaults are the paper's (and the project's choices)."""
    mode: str = "transform"
    guidance_step: int = 20          # M: guidance starts at schedule index T - M
    lookahead_steps: int = 2         # P: look-ahead steps (transform) or guided steps (direct)
    step_size: float = 10.0          # rho (0: the random perturbation alone)
    radius: float | None = 0.2       # transform: L-inf projection radius; None disables it
    lambda_class: float = 1.0
    lambda_group: float = 1.0
    normalize_features: bool = True  # L2-normalise f before the energy (the prototypes are unit vectors)
    renormalize_prototypes: bool = True  # unit prototypes: rescale the class and group means to norm 1
    repeats: int = 1                 # transform: number of applications (the paper: once)
    interval: int = 1                # transform: denoising steps between applications
    transform_start: str = "random"  # transform: (a, b) start at the draws (paper) or at (0, 0) (gradient alone)
    energy: str = "prototype"        # the paper's prototype energy, or the guide's cross-entropy (a reference)
    transform_point: str = "unclamped"  # the paper's gradient on (a, b), or an offset stepped where it lands
    guidance_iters: int = 1          # transform_point landed: normalised steps on the offset
    offset_step: float = 1.0         # transform_point landed: each step's L-inf size, in radii

    def indices(self, num_steps):
        """Indices into the full timestep schedule where guidance acts."""
        first = num_steps - self.guidance_step
        if self.mode == "none":
            return []
        if self.mode == "direct":
            return [first + p for p in range(self.lookahead_steps)]
        return [first + j * self.interval for j in range(self.repeats)]

    def schedule(self, num_steps, start):
        """indices(num_steps), each checked to lie in the denoised steps [start, last]: a transform
        look-ahead needs P steps after its index, a direct step one."""
        last = num_steps - (self.lookahead_steps if self.mode == "transform" else 1)
        at = self.indices(num_steps)
        outside = [i for i in at if not start <= i <= last]
        if outside:
            raise DistDiffError(f"guidance at step index {outside[0]} is outside the denoised steps [{start}, {last}] "
                                f"(M={self.guidance_step}, P={self.lookahead_steps} of {num_steps} steps); "
                                "lower --guidance_step or raise --strength")
        return at


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
