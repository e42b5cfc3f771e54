"""Distribution-aware energy guidance (DistDiff, stage 3).

At the guidance step the current latent z is perturbed, P look-ahead DDIM steps are run from
it with autograd on, each predicted clean latent x0 is decoded and encoded by the guide model,
and the energy

    E = lambda_c * ||f - p_c|| + lambda_g * ||f - p_g*||,   p_g* = most cosine-similar group,

averaged over the P steps, is lowered by one gradient step of size rho. `transform` guidance
optimises a per-channel affine map z' = z * (1 + a) + b with a ~ U(0, 1), b ~ N(0, 1);
`direct` guidance steps on z itself. Either way the result is projected into an L-inf ball of
the given radius around the unperturbed z, and denoising continues from there.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function

GUIDANCE_MODES = ("transform", "direct", "none")


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance hyper-parameters; the defaults are the paper's."""
    mode: str = "transform"
    guidance_step: int = 20          # M: applied at timesteps[T - M]
    lookahead_steps: int = 2         # P
    step_size: float = 10.0          # rho
    radius: float | None = 0.2       # L-inf projection radius; None disables the projection
    lambda_class: float = 1.0
    lambda_group: float = 1.0
    normalize_features: bool = True  # L2-normalise f before the energy (prototypes are unit-mean)
    repeats: int = 1                 # number of applications (the paper: once)
    interval: int = 1                # denoising steps between applications when repeats > 1
    record_energy: bool = True       # measure E(z) before and E(z_new) after (2P extra UNet calls)

    def indices(self, num_steps):
        """Indices into the full timestep schedule where guidance is applied."""
        if self.mode == "none":
            return []
        first = num_steps - self.guidance_step
        return [first + j * self.interval for j in range(self.repeats)]


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


def _finite_rows(*tensors):
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


def guide_step(z, lookahead_energy, cfg, draw_a=None, draw_b=None):
    """One guidance application; returns (new latent, finite mask [B]).

    `lookahead_energy(z) -> [B]` runs the P-step look-ahead. Items whose energy or gradient is
    NaN/inf keep their unguided latent (reported through the mask).
    """
    with torch.enable_grad():
        if cfg.mode == "transform":
            a = draw_a.detach().clone().requires_grad_(True)
            b = draw_b.detach().clone().requires_grad_(True)
            values = lookahead_energy(z * (1 + a) + b)
            with record_function("guidance_backward"):
                grad_a, grad_b = torch.autograd.grad(values.sum(), [a, b])
            a, b = a - cfg.step_size * grad_a, b - cfg.step_size * grad_b
            z_new = z * (1 + a) + b
            ok = _finite_rows(values, grad_a, grad_b)
        elif cfg.mode == "direct":
            z_var = z.detach().clone().requires_grad_(True)
            values = lookahead_energy(z_var)
            with record_function("guidance_backward"):
                (grad,) = torch.autograd.grad(values.sum(), [z_var])
            z_new = z - cfg.step_size * grad
            ok = _finite_rows(values, grad)
        else:
            raise ValueError(f"unknown guidance mode {cfg.mode!r}; choose from {GUIDANCE_MODES}")
    z_new = project(z_new.detach(), z, cfg.radius)
    z_new = torch.where(ok.view(-1, *([1] * (z.dim() - 1))), z_new, z)
    return z_new, ok
