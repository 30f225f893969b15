"""Loss weightings as pure functions of the signal-to-noise ratio.

SNR(t) = a_t / (1 - a_t) with a_t the cumulative product of (1 - beta). Every
strategy is one entry of WEIGHT_SCHEDULES: a function of the SNR array whose
keyword arguments, with their defaults, are its parameters, and whose
annotations (a `Domain`) their valid ranges; a parameter without one takes any
finite number. Flags, configs, plans and figures are derived from the registry;
the diffusion process evaluates the chosen schedule once per timestep and
multiplies the per-sample MSE term by it.
"""

import dataclasses
import inspect
import math

import numpy as np

from .targets import check_target, eps_error_per_target_error


@dataclasses.dataclass(frozen=True)
class Domain:
    """The finite numbers from `low` to `high` (None: unbounded), each end open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, name):
        """`name > 0 (valid range (0, inf))`, for messages."""
        bounds = []
        if self.low is not None:
            bounds.append(f"{name} {'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{name} {'<' if self.high_open else '<='} {self.high:g}")
        if not bounds:
            return f"{name} finite"
        low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{' and '.join(bounds)} (valid range {low}, {high})"


ANY_FINITE = Domain()
POSITIVE = Domain(0.0, low_open=True)
NON_NEGATIVE = Domain(0.0)


def constant(snr):
    return np.ones_like(snr)


# k > 0 keeps the weight finite where SNR -> 0 (P2's reason for k); gamma = 0 is P2's own
# baseline, the constant weighting, and gamma < 0 would weight the noisiest steps least.
def p2(snr, p2_k: POSITIVE = 1.0, p2_gamma: NON_NEGATIVE = 1.0):
    """Choi et al. 2022: 1 / (k + SNR)^gamma."""
    return 1.0 / (p2_k + snr) ** p2_gamma


# gamma clips the SNR: at 0 every weight is 0 (nothing is trained), below it they turn negative.
def min_snr(snr, min_snr_gamma: POSITIVE = 5.0):
    """Hang et al. 2023, for epsilon targets: min(SNR, gamma) / SNR."""
    return np.minimum(snr, min_snr_gamma) / snr


def inverse_snr(snr):
    """1 / SNR: the x0-space error of an epsilon model (Appendix B; diverges in practice)."""
    return 1.0 / snr


def debias(snr):
    """Yu et al. 2024, Eq. 8: the amplification coefficient 1 / sqrt(SNR)."""
    return 1.0 / np.sqrt(snr)


# The field's weightings beside the paper's (docs/weightings.md). Each is defined in its own paper's
# space and returned as the weight on ADM's per-timestep epsilon error under uniform t, through
# ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR (Eq. 6) and, for a VE noise level, sigma = 1/sqrt(SNR).


def edm(snr, sigma_data: POSITIVE = 0.5):
    """Karras et al. 2022 (EDM), Eq. 8 / Table 1: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    EDM weighs the denoiser's (x0) error at sigma = 1/sqrt(SNR); times the x0 error per epsilon
    error, 1/SNR = sigma^2, that is 1 + 1 / (sigma_data^2 SNR) on the epsilon error.
    """
    return 1.0 + 1.0 / (sigma_data**2 * snr)


def edm2(snr, sigma_data: POSITIVE = 0.5):
    """Karras et al. 2024 (EDM2), EDM2Loss: EDM's lambda(sigma) / exp(u(sigma)) plus u(sigma), u learned.

    The fixed part is EDM's weighting (1 + 1 / (sigma_data^2 SNR) on the epsilon error); the
    learned log-variance u is trained with the network (learned_weighting.py) and is 0 at the start.
    """
    return edm(snr, sigma_data)


def log_snr_intervals(snr):
    """|lambda_t - lambda_(t-1)| for lambda = log SNR over t = 0..T-1 (t = 0 takes t = 1's interval).

    `snr` is the SNR of every timestep in order. It is the width in log SNR that timestep t stands for
    when an integral over lambda is read as a sum over ADM's discrete t.
    """
    log_snr = np.log(np.asarray(snr, dtype=np.float64))
    if log_snr.size < 2:
        return np.full_like(log_snr, np.nan)
    steps = np.abs(np.diff(log_snr))
    return np.concatenate([steps[:1], steps])


# The bias takes any finite value: it only shifts the sigmoid along log SNR.
def sigmoid(snr, sigmoid_bias: ANY_FINITE = -2.0):
    """Kingma & Gao 2023, Sec. 5: w(lambda) = sigmoid(b - lambda), lambda = log SNR, times T |d lambda|.

    Their loss is (1/2) E_{t~U(0,1)}[w(lambda_t) (-d lambda/dt) ||eps - eps_hat||^2], an integral over
    lambda. ADM draws t uniformly from T discrete steps, so the same integral, as a sum over them, puts
    T |lambda_t - lambda_(t-1)| w(lambda_t) on the epsilon error of step t (the 1/2 dropped, as ADM's
    constant weighting drops it from the ELBO's).
    """
    log_snr = np.log(snr)
    return len(snr) * log_snr_intervals(snr) / (1.0 + np.exp(log_snr - sigmoid_bias))


def soft_min_snr(snr, soft_min_snr_gamma: POSITIVE = 4.0):
    """Crowson et al. 2024 (HDiT), Sec. 5: x0 weight (1/SNR + 1/gamma)^-1, gamma/(gamma + SNR) on epsilon.

    k-diffusion writes it 1 / (sigma^2 + sigma_data^2) on the denoiser's error, so gamma = sigma_data^-2
    (4 for its sigma_data = 0.5).
    """
    return soft_min_snr_gamma / (soft_min_snr_gamma + snr)


WEIGHT_SCHEDULES = {
    "constant": constant,
    "p2": p2,
    "min_snr": min_snr,
    "snr": inverse_snr,
    "debias": debias,
    "edm": edm,
    "edm2": edm2,
    "sigmoid": sigmoid,
    "soft_min_snr": soft_min_snr,
}

# Schedules whose weighting is partly learned during training (learned_weighting.py).
LEARNED_SCHEDULES = ("edm2",)

WEIGHT_SPACES = ("target", "eps")

# The code base each schedule's command lines come from, named in messages to their users.
SCHEDULE_ORIGINS = {"constant": "ADM's code", "p2": "P2's code", "min_snr": "Min-SNR's code", "debias": "the paper's code"}

# Schedules whose original command lines carry another schedule's parameters without reading them:
# the paper's code (yuhuUSTC/Debias) takes P2's `--p2_gamma 1 --p2_k 1` over from P2's README and
# trains the debias weighting it hard-codes, so with debias those parameters are read as unread.
CARRIES_PARAMETERS_OF = {"debias": "p2"}


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


def parameter_domains(name):
    """{parameter: Domain} of schedule `name`; a parameter declared without one takes any finite number."""
    check_weight_schedule(name)
    domains = {}
    for parameter in list(inspect.signature(WEIGHT_SCHEDULES[name], eval_str=True).parameters.values())[1:]:
        domains[parameter.name] = parameter.annotation if isinstance(parameter.annotation, Domain) else ANY_FINITE
    return domains


def parameter_domain(key):
    """The Domain of parameter `key` (a name two schedules share must share its range), or None if no schedule has it."""
    found = None
    for name in weight_schedule_names():
        domain = parameter_domains(name).get(key)
        if domain is not None and found not in (None, domain):
            raise TypeError(f"weight schedules disagree on the valid range of {key!r}: {found} and {domain}")
        found = domain or found
    return found


def check_parameter_values(values):
    """Refuse a schedule parameter in `values` (flags, a config, a plan's table) outside its declared range.

    Every schedule's parameters are checked, read or not, so that a bad value never waits in a
    config for the day its schedule is chosen. None stands for not given.
    """
    for key in parameter_defaults():
        value = values.get(key)
        if value is None:
            continue
        domain = parameter_domain(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"--{key} {value!r}: not a number; expected {domain.describe(key)}") from None
        if number not in domain:
            raise ValueError(f"--{key} {number:g}: out of range; expected {domain.describe(key)}")


def parameter_owners():
    """{parameter: [schedules that read it]}."""
    owners = {}
    for name in weight_schedule_names():
        for key in schedule_parameters(name):
            owners.setdefault(key, []).append(name)
    return owners


def check_given_parameters(name, given):
    """Refuse schedule parameters given (on the command line or in a config) that schedule `name` does not read.

    `given` holds the names of the flags given, whatever their values. The
    parameters a schedule's original command line carries without reading them
    (CARRIES_PARAMETERS_OF) are accepted: the returned line says they are not
    read, for the log; otherwise None is returned.
    """
    check_weight_schedule(name)
    owners = parameter_owners()
    foreign = sorted(p for p in given if p in owners and name not in owners[p])
    carried = set(schedule_parameters(CARRIES_PARAMETERS_OF[name])) if name in CARRIES_PARAMETERS_OF else set()
    stray = [p for p in foreign if p not in carried]
    if stray:
        flags = ", ".join(f"--{p}" for p in stray)
        schedules = sorted({owner for p in stray for owner in owners[p]})
        choices = schedules + [s for s, lender in CARRIES_PARAMETERS_OF.items() if lender in schedules and s != name]
        options = " or ".join(
            f"--weight_schedule {c}" + (f" ({SCHEDULE_ORIGINS[c]})" if c in SCHEDULE_ORIGINS else "") for c in choices
        )
        raise ValueError(
            f"{flags} {'is a parameter' if len(stray) == 1 else 'are parameters'} of --weight_schedule "
            f"{' and '.join(schedules)}, not of --weight_schedule {name}, and would be ignored: add {options}, "
            f"or drop {flags}"
        )
    if foreign:
        flags = ", ".join(f"--{p}" for p in foreign)
        return (
            f"{flags} not read: --weight_schedule {name} has no such parameter "
            f"({SCHEDULE_ORIGINS.get(name, 'its code')} takes them on its command line and ignores them too)"
        )
    return None


@dataclasses.dataclass(frozen=True)
class LossWeighting:
    """A validated loss weighting: a registered schedule, the space it weighs in, its own parameters.

    Built once from the flags (`from_flags`) and handed to the diffusion, which asks it for
    the weight of every timestep (`weights`).
    """

    name: str = "constant"
    weight_space: str = "target"
    parameters: tuple = ()  # (parameter, value) of the schedule's own parameters, defaults filled in

    @classmethod
    def from_flags(cls, name="constant", weight_space="target", **params):
        """`params` may hold every schedule's parameters (the flags); the chosen schedule keeps its own."""
        check_weight_schedule(name)
        if weight_space not in WEIGHT_SPACES:
            raise ValueError(f"unknown --weight_space {weight_space!r}; expected one of: {', '.join(WEIGHT_SPACES)}")
        unknown = sorted(set(params) - set(parameter_defaults()))
        if unknown:
            raise TypeError(f"unknown weighting parameter(s) {', '.join(unknown)}")
        check_parameter_values(params)
        own = {key: float(default if params.get(key) is None else params[key])
               for key, default in schedule_parameters(name).items()}
        return cls(name, weight_space, tuple(sorted(own.items())))

    def weights(self, alphas_cumprod, target="eps"):
        """The weight of every timestep's MSE term, as a float64 array, for a network predicting `target`.

        With weight_space "target" the schedule multiplies the error in that target's own
        space (the paper's experiments); with "eps" it is read as a weight on the epsilon
        error, so one schedule means one objective under every parameterisation.
        """
        check_target(target)
        snr = snr_from_alphas_cumprod(alphas_cumprod)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            weights = WEIGHT_SCHEDULES[self.name](snr, **dict(self.parameters))
            if self.weight_space == "eps":
                weights = weights * eps_error_per_target_error(target, snr)
        bad = np.flatnonzero(~np.isfinite(weights))
        if bad.size:
            t = int(bad[0])
            raise ValueError(
                f"--weight_schedule {self.name} is not finite at timestep {t} (SNR={snr[t]:.3g}); "
                "choose a noise schedule with SNR > 0 at every step or another weighting"
            )
        return np.asarray(weights, dtype=np.float64)


def timestep_loss_weights(name, alphas_cumprod, target="eps", weight_space="target", **params):
    """`LossWeighting.from_flags(name, weight_space, **params).weights(alphas_cumprod, target)`."""
    return LossWeighting.from_flags(name, weight_space, **params).weights(alphas_cumprod, target)
