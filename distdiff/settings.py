"""The expansion's settings as plain dataclasses, with the choices each takes: the img2img
settings (SampleConfig), the guidance's (GuidanceConfig), and the per-item guidance outcomes.
Their defaults are the paper's, written here once (the flags of distdiff/expand_flags.py take
them from these fields). Nothing here imports torch, so a command line parses, and a shard with
nothing left to make stops, before the model libraries load (about 5 s of imports per process).
"""
from dataclasses import dataclass

from distdiff import DistDiffError

FRAMINGS = ("center", "random", "squash")
START_RULES = ("diffusers", "authors")
GUIDANCE_MODES = ("transform", "direct", "none")
TRANSFORM_STARTS = ("random", "identity")
ENERGIES, TRANSFORM_POINTS = ("prototype", "classifier"), ("unclamped", "landed")
GUIDE_INPUTS = ("guide", "authors")  # the guide's own test transform, or the authors' raw resize
# Per-item guidance outcome codes (the manifest spells them out with GUIDANCE_STATUS).
GUIDED, NONFINITE, ZERO_GRADIENT = 0, 1, 2
GUIDANCE_STATUS = {GUIDED: "guided", NONFINITE: "nonfinite", ZERO_GRADIENT: "zero_gradient"}
LOST = tuple(name for code, name in GUIDANCE_STATUS.items() if code != GUIDED)  # kept unguided, marked


@dataclass
class SampleConfig:
    """img2img settings; the defaults are the paper's (framing and start rule: see README)."""
    num_steps: int = 50
    strength: float = 0.5
    cfg_scale: float = 7.5
    resolution: int | None = None  # None: the model's native size (512 for SD-1.4)
    framing: str = "center"        # source to square: shorter side + centre crop | + seeded random crop | squash
    start_rule: str = "diffusers"  # first denoised index: T - int(T s) (diffusers) | int((1 - s) T) (authors)
    shared_posterior: bool = False  # one VAE posterior sample per source (authors) instead of per copy
    shared_prompt: bool = False    # with several prompts per class: one per source (authors), not per copy
    offset_noise: bool = False     # the authors' --offset_noise: + 0.1 N(0, 1) per item and channel

    @property
    def start(self):
        """Index of the first denoised step."""
        if self.start_rule == "authors":
            return int((1 - self.strength) * self.num_steps)
        return self.num_steps - min(int(self.num_steps * self.strength), self.num_steps)


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
