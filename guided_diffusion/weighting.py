"""Loss weightings as pure functions of the signal-to-noise ratio.

SNR(t) = a_t / (1 - a_t) with a_t the cumulative product of (1 - beta). Every
strategy is one entry of WEIGHT_SCHEDULES: a function of the SNR array whose
keyword arguments, with their defaults, are its parameters. Flags, configs,
plans and figures are derived from the registry; the diffusion process
evaluates the chosen schedule once per timestep and multiplies the per-sample
MSE term by it.
"""

import inspect

import numpy as np

from .targets import check_target, eps_error_per_target_error


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

WEIGHT_SPACES = ("target", "eps")


def snr_from_alphas_cumprod(alphas_cumprod):
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return alphas_cumprod / (1.0 - alphas_cumprod)


def weight_schedule_names():
    return sorted(WEIGHT_SCHEDULES)


def check_weight_schedule(name):
    if name not in WEIGHT_SCHEDULES:
        raise ValueError(f"unknown --weight_schedule {name!r}; expected one of: {', '.join(weight_schedule_names())}")
    return name


def schedule_parameters(name):
    """{parameter: default} that schedule `name` declares: the keyword arguments after `snr`.

    Each becomes a flag (`--p2_gamma`), a config key and a plan key, so a new
    parameterised schedule needs nothing beyond its entry in WEIGHT_SCHEDULES.
    """
    check_weight_schedule(name)
    parameters = {}
    for parameter in list(inspect.signature(WEIGHT_SCHEDULES[name]).parameters.values())[1:]:
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"weight schedule {name!r}: parameter {parameter.name!r} needs a default")
        parameters[parameter.name] = float(parameter.default)
    return parameters


def parameter_defaults():
    """{parameter: default} over every registered schedule; a name two schedules share must share its default."""
    defaults = {}
    for name in weight_schedule_names():
        for key, value in schedule_parameters(name).items():
            if defaults.setdefault(key, value) != value:
                raise TypeError(f"weight schedules disagree on the default of {key!r}: {defaults[key]} and {value}")
    return defaults


def parameter_owners():
    """{parameter: [schedules that read it]}."""
    owners = {}
    for name in weight_schedule_names():
        for key in schedule_parameters(name):
            owners.setdefault(key, []).append(name)
    return owners


def timestep_loss_weights(name, alphas_cumprod, target="eps", weight_space="target", **params):
    """The weight of every timestep's MSE term, as a float64 array.

    `target` is what the network predicts ("eps", "x0" or "v"). With
    weight_space="target" the schedule multiplies the error in that target's own
    space (the paper's experiments); with "eps" it is read as a weight on the
    epsilon error, so one schedule means one objective under every parameterisation.
    `params` may hold every schedule's parameters (the flags); the chosen schedule
    takes its own, and its declared defaults fill in the rest.
    """
    check_weight_schedule(name)
    if weight_space not in WEIGHT_SPACES:
        raise ValueError(f"unknown --weight_space {weight_space!r}; expected one of: {', '.join(WEIGHT_SPACES)}")
    check_target(target)
    own = {key: float(params[key]) for key in schedule_parameters(name) if params.get(key) is not None}
    snr = snr_from_alphas_cumprod(alphas_cumprod)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weights = WEIGHT_SCHEDULES[name](snr, **own)
        if weight_space == "eps":
            weights = weights * eps_error_per_target_error(target, snr)
    bad = np.flatnonzero(~np.isfinite(weights))
    if bad.size:
        t = int(bad[0])
        raise ValueError(
            f"--weight_schedule {name} is not finite at timestep {t} (SNR={snr[t]:.3g}); "
            "choose a noise schedule with SNR > 0 at every step or another weighting"
        )
    return np.asarray(weights, dtype=np.float64)
