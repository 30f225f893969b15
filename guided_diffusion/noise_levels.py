"""Noise-level densities of the field, as densities over log SNR mapped onto ADM's discrete timesteps.

EDM, EDM2 and SD3 draw their noise level from a normal density over log SNR (each with its own
mean and spread, written in its own variable), and Hang et al. 2024 from a Laplace density over it:

    EDM   (Karras et al. 2022, Sec. 5)   ln sigma ~ N(P_mean = -1.2, P_std = 1.2)
    EDM2  (Karras et al. 2024, Sec. 2)   ln sigma ~ N(P_mean = -0.4, P_std = 1.0)
    SD3   (Esser et al. 2024, Sec. 3.1)  t = sigmoid(u), u ~ N(m = 0, s = 1), rectified flow
    Hang et al. 2024 (Eq. 7)             p(lambda) = exp(-|lambda - mu| / b) / (2b), mu = 0, b = 0.5

With sigma = 1/sqrt(SNR) (VP to VE), lambda = log SNR = -2 ln sigma, so ln sigma ~ N(P_mean, P_std^2)
is lambda ~ N(-2 P_mean, (2 P_std)^2). Rectified flow's x_t = (1 - t) x0 + t eps has SNR ((1-t)/t)^2,
lambda = -2 logit(t), so u ~ N(m, s^2) is lambda ~ N(-2m, (2s)^2).

On ADM's T discrete steps a density p(lambda) becomes p(t) proportional to p(lambda_t) |lambda_t - lambda_(t-1)|
(weighting.log_snr_intervals): the mass of the log-SNR interval that step t stands for.
"""

import dataclasses
import math

import numpy as np

from .weighting import log_snr_intervals, snr_from_alphas_cumprod

FAMILIES = ("normal", "laplace")


@dataclasses.dataclass(frozen=True)
class LogSnrDensity:
    """A normal (loc = mean, scale = standard deviation) or Laplace (loc = mu, scale = b) density over log SNR."""

    family: str
    loc: float
    scale: float

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown noise-level density family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        if not math.isfinite(self.loc):
            raise ValueError(f"noise-level density {self.family}: location {self.loc!r} is not finite")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(
                f"noise-level density {self.family}: spread {self.scale:g} out of range; expected a spread > 0"
            )

    @classmethod
    def from_log_sigma_normal(cls, p_mean, p_std):
        """EDM's ln sigma ~ N(P_mean, P_std^2) as a density over lambda = -2 ln sigma."""
        return cls("normal", -2.0 * p_mean, 2.0 * p_std)

    @classmethod
    def from_logit_normal(cls, m, s):
        """SD3's t = sigmoid(u), u ~ N(m, s^2), as a density over lambda = -2 logit(t)."""
        return cls("normal", -2.0 * m, 2.0 * s)

    def pdf(self, log_snr):
        z = (np.asarray(log_snr, dtype=np.float64) - self.loc) / self.scale
        if self.family == "normal":
            return np.exp(-0.5 * z**2) / (self.scale * math.sqrt(2.0 * math.pi))
        return np.exp(-np.abs(z)) / (2.0 * self.scale)

    def timestep_probabilities(self, alphas_cumprod):
        """p(t) over ADM's steps, proportional to p(lambda_t) |lambda_t - lambda_(t-1)|, summing to 1."""
        snr = snr_from_alphas_cumprod(alphas_cumprod)
        mass = self.pdf(np.log(snr)) * log_snr_intervals(snr)
        if not (np.all(np.isfinite(mass)) and mass.sum() > 0):
            raise ValueError(f"{self} puts no finite mass on the diffusion's {len(snr)} steps")
        return mass / mass.sum()


# The papers' own densities, under names that read like theirs.
NOISE_LEVEL_DENSITIES = {
    "edm-lognormal": LogSnrDensity.from_log_sigma_normal(-1.2, 1.2),
    "edm2-lognormal": LogSnrDensity.from_log_sigma_normal(-0.4, 1.0),
    "logit-normal": LogSnrDensity.from_logit_normal(0.0, 1.0),
    "laplace": LogSnrDensity("laplace", 0.0, 0.5),
}

# `<density>` draws t from it with no correction: the density is part of the objective (how EDM, EDM2 and
# SD3 train), and the effective weight on the epsilon error is T p(t) w(t). `<density>-importance` reweighs
# each draw by 1/(T p(t)): importance sampling, the objective stays uniform t's (1/T) sum_t w(t) mse(t).
IMPORTANCE_SUFFIX = "-importance"


def density_sampler_names():
    return [name + suffix for name in NOISE_LEVEL_DENSITIES for suffix in ("", IMPORTANCE_SUFFIX)]


def parse_density_sampler(name):
    """(density, importance?) of a sampler name such as `laplace` or `edm-lognormal-importance`, or None."""
    importance = name.endswith(IMPORTANCE_SUFFIX)
    base = name[: -len(IMPORTANCE_SUFFIX)] if importance else name
    return (NOISE_LEVEL_DENSITIES[base], importance) if base in NOISE_LEVEL_DENSITIES else None


def effective_eps_weights(mse_weights, sampler_name, alphas_cumprod):
    """The weight on the epsilon error of each step, as an average over uniform t: T p(t) w(t) when the
    density is part of the objective, w(t) otherwise (uniform t and every importance sampler)."""
    parsed = parse_density_sampler(sampler_name)
    weights = np.asarray(mse_weights, dtype=np.float64)
    if parsed is None or parsed[1]:
        return weights
    return len(weights) * parsed[0].timestep_probabilities(alphas_cumprod) * weights
