"""What the network predicts: the noise eps, the image x0 or the velocity v, and the identities between them.

With x_t = alpha x0 + sigma eps, alpha = sqrt(a_t), sigma = sqrt(1 - a_t) (Eq. 3):

    x0 = (x_t - sigma eps) / alpha          eps = (x_t - alpha x0) / sigma
    v  = alpha eps - sigma x0               x0 = alpha x_t - sigma v,   eps = sigma x_t + alpha v

and the errors of the three targets differ by a factor that depends on SNR = alpha^2 / sigma^2 only:
||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR (Eq. 6) and ||v - v_hat||^2 = ||eps - eps_hat||^2 (1 + SNR) / SNR.

This module is the one place that names the targets and maps them to ADM's flags
(`--predict_xstart`) and ours (`--predict_v`). GaussianDiffusion keeps ADM's precomputed
discrete coefficients for its own eps <-> x0 steps, so its arithmetic stays ADM's bit for bit.
"""

import enum

import numpy as np


class ModelMeanType(enum.Enum):
    """What the network predicts (ADM's enum, importable from gaussian_diffusion as before)."""

    PREVIOUS_X = enum.auto()  # the posterior mean of x_{t-1}
    START_X = enum.auto()  # x0
    EPSILON = enum.auto()  # eps
    VELOCITY = enum.auto()  # v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (Salimans & Ho 2022)


TARGETS = ("eps", "x0", "v")
DEFAULT_TARGET = "eps"

_MEAN_TYPES = {"eps": ModelMeanType.EPSILON, "x0": ModelMeanType.START_X, "v": ModelMeanType.VELOCITY}
_FLAGS = {"eps": {}, "x0": {"predict_xstart": True}, "v": {"predict_v": True}}


def check_target(name, where="prediction target"):
    if name not in TARGETS:
        raise ValueError(f"unknown {where} {name!r}; expected one of {', '.join(TARGETS)}")
    return name


def target_from_flags(predict_xstart=False, predict_v=False):
    """eps, x0 or v from ADM's --predict_xstart and our --predict_v."""
    if predict_xstart and predict_v:
        raise ValueError("--predict_xstart and --predict_v are exclusive: choose one prediction target")
    return "x0" if predict_xstart else "v" if predict_v else "eps"


def target_flags(target):
    """The flags that select `target` (an empty dict for eps, ADM's default)."""
    return dict(_FLAGS[check_target(target)])


def mean_type(target):
    return _MEAN_TYPES[check_target(target)]


def target_of_mean_type(model_mean_type):
    """The target name of a ModelMeanType; None for PREVIOUS_X, which has no SNR identity."""
    for name, value in _MEAN_TYPES.items():
        if value == model_mean_type:
            return name
    return None


def to_x0_and_eps(target, output, x_t, alpha, sigma):
    """(x0, eps) that a prediction of `target` implies at x_t."""
    check_target(target)
    if target == "eps":
        return (x_t - sigma * output) / alpha, output
    if target == "x0":
        return output, (x_t - alpha * output) / sigma
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output


def to_eps(target, output, x_t, alpha, sigma):
    return output if target == "eps" else to_x0_and_eps(target, output, x_t, alpha, sigma)[1]


def to_x0(target, output, x_t, alpha, sigma):
    return output if target == "x0" else to_x0_and_eps(target, output, x_t, alpha, sigma)[0]


def from_x0_and_eps(target, x0, eps, alpha, sigma):
    """The value of `target` for a known image and noise (the regression target of training)."""
    check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    return alpha * eps - sigma * x0


def eps_error_per_target_error(target, snr):
    """||eps - eps_hat||^2 / ||target - target_hat||^2 as a function of SNR (see the module docstring)."""
    snr = np.asarray(snr, dtype=np.float64)
    check_target(target)
    if target == "eps":
        return np.ones_like(snr)
    if target == "x0":
        return snr
    return snr / (1.0 + snr)
