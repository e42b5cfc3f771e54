"""Guidance variants beyond the paper's single clamped step (docs/guidance_variants.md), kept out
of the method's four files: the paper's path never enters here.

`offset_step` (V1, V2) treats the perturbation as an offset d on the latent z. It starts at the
paper's draws clamped first, d0 = P_r(z(1 + a) + b - z) (with transform_start "identity", a = b = 0:
d0 = 0), then `iters` times takes the energy's gradient g at z + d, where the latent lands, and
steps d <- P_r(d - step * r * g / max|g|): a normalised L-inf step of `step` radii per item, so its
size does not depend on the energy's scale. With step 0 or no iterations it returns z + d0, the
noise-only latent of the paper's rho = 0 (or z itself from the identity).
"""
import torch

from distdiff.guidance import project
from distdiff.numerics import keep_guided, scaled_grad
from distdiff.settings import GUIDED


def offset_step(z, lookahead_energy, a, b, radius, iters, step, loss_scale=None):
    """The guided latent (z's dtype) and the outcome per item [B]; `lookahead_energy(z') -> [B]`.
    The state is the landed point x = z + d itself, so that no step returns the clamped noise to
    the bit: x0 = P(z(1 + a) + b), x <- P(x - step r g / max|g|), P the clamp into z +- r."""
    z32 = z.float()
    landed = project(z32 * (1 + a.float()) + b.float(), z32, radius)
    status = torch.full((len(z),), GUIDED, dtype=torch.long, device=z.device)
    for _ in range(iters if step else 0):
        def energy_of(x):
            return lookahead_energy(x.to(z.dtype))
        _, (grad,), outcome = scaled_grad(energy_of, [landed], z.dtype, loss_scale=loss_scale)
        largest = grad.flatten(1).abs().amax(1).view(-1, *[1] * (grad.dim() - 1))
        moved = project(landed - step * radius * grad / torch.where(largest > 0, largest, torch.ones_like(largest)),
                        z32, radius)
        landed = torch.where((outcome == GUIDED).view_as(largest), moved, landed)  # a lost item stays where it was
        status = torch.maximum(status, outcome)
    return keep_guided(landed.to(z.dtype), z, status), status
