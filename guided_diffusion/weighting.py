"""Loss weightings as pure functions of the signal-to-noise ratio.

SNR(t) = a_t / (1 - a_t) with a_t the cumulative product of (1 - beta). Every
strategy is one entry of WEIGHT_SCHEDULES; the diffusion process evaluates the
chosen one once per timestep and multiplies the per-sample MSE term by it.
"""

import inspect

import numpy as np


def constant(snr):
    return np.ones_like(snr)


def p2(snr, p2_k=1.0, p2_gamma=1.0):
    """Choi et al. 2022: 1 / (k + SNR)^gamma."""
    return 1.0 / (p2_k + snr) ** p2_gamma


def min_snr(snr, min_snr_gamma=5.0):
    """Hang et al. 2023, for epsilon targets: min(SNR, gamma) / SNR."""
    return np.minimum(snr, min_snr_gamma) / snr


def inverse_snr(snr):
    """1 / SNR: the x0-space error of an epsilon model (Appendix B; diverges in practice)."""
    return 1.0 / snr


def debias(snr):
    """Yu et al. 2024, Eq. 8: the amplification coefficient 1 / sqrt(SNR)."""
    return 1.0 / np.sqrt(snr)


WEIGHT_SCHEDULES = {
    "constant": constant,
    "p2": p2,
    "min_snr": min_snr,
    "snr": inverse_snr,
    "debias": debias,
}

# Multiplier that turns an epsilon-space weight into the weight on another target's MSE:
# ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR and ||v - v_hat||^2 = ||eps - eps_hat||^2 (1 + SNR) / SNR.
_EPS_ERROR_PER_TARGET_ERROR = {
    "eps": lambda snr: np.ones_like(snr),
    "x0": lambda snr: snr,
    "v": lambda snr: snr / (1.0 + snr),
}

WEIGHT_SPACES = ("target", "eps")


def snr_from_alphas_cumprod(alphas_cumprod):
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return alphas_cumprod / (1.0 - alphas_cumprod)


def weight_schedule_names():
    return sorted(WEIGHT_SCHEDULES)


def _parameters_of(name, params):
    accepted = list(inspect.signature(WEIGHT_SCHEDULES[name]).parameters)[1:]
    return {key: float(params[key]) for key in accepted if key in params and params[key] is not None}


def timestep_loss_weights(name, alphas_cumprod, target="eps", weight_space="target", **params):
    """The weight of every timestep's MSE term, as a float64 array.

    `target` is what the network predicts ("eps", "x0" or "v"). With
    weight_space="target" the schedule multiplies the error in that target's own
    space (the paper's experiments); with "eps" it is read as a weight on the
    epsilon error, so one schedule means one objective under every parameterisation.
    Extra keyword parameters not used by the chosen schedule are ignored, so
    callers can pass every schedule's flags at once.
    """
    if name not in WEIGHT_SCHEDULES:
        raise ValueError(
            f"unknown --weight_schedule {name!r}; expected one of: {', '.join(weight_schedule_names())}"
        )
    if weight_space not in WEIGHT_SPACES:
        raise ValueError(f"unknown --weight_space {weight_space!r}; expected one of: {', '.join(WEIGHT_SPACES)}")
    if target not in _EPS_ERROR_PER_TARGET_ERROR:
        raise ValueError(f"unknown prediction target {target!r}; expected eps, x0 or v")
    snr = snr_from_alphas_cumprod(alphas_cumprod)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weights = WEIGHT_SCHEDULES[name](snr, **_parameters_of(name, params))
        if weight_space == "eps":
            weights = weights * _EPS_ERROR_PER_TARGET_ERROR[target](snr)
    bad = np.flatnonzero(~np.isfinite(weights))
    if bad.size:
        t = int(bad[0])
        raise ValueError(
            f"--weight_schedule {name} is not finite at timestep {t} (SNR={snr[t]:.3g}); "
            "choose a noise schedule with SNR > 0 at every step or another weighting"
        )
    return np.asarray(weights, dtype=np.float64)
