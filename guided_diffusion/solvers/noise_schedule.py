"""Continuous-time view of a discrete-time (ADM) noise schedule, and the time grids ODE samplers step on.

DPM-Solver (Lu et al. 2022) treats a model trained on N discrete steps
as a continuous-time one: step n sits at t_n = (n + 1) / N and log(alpha_t) is
interpolated piecewise-linearly between those points, so sampling runs on
t in [1/N, 1]. Here alpha_t = sqrt(alphas_cumprod), sigma_t = sqrt(1 - alpha_t^2)
(variance preserving) and lambda_t = log(alpha_t / sigma_t) is the half-log-SNR
the solvers integrate over.

Everything is float64 numpy: the solvers' coefficients are scalars, computed
exactly here whatever the device or precision of the images.
"""

import numpy as np

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


class DiscreteNoiseSchedule:
    """alpha_t, sigma_t, lambda_t for continuous t in [1/N, 1] from N cumulative alpha products."""

    def __init__(self, alphas_cumprod):
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if alphas_cumprod.ndim != 1 or alphas_cumprod.size < 2:
            raise ValueError(
                f"alphas_cumprod must be a 1-D array of at least 2 steps, got shape {alphas_cumprod.shape}"
            )
        if not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        if not (np.diff(alphas_cumprod) < 0).all():
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.num_timesteps = alphas_cumprod.size
        self.t_grid = np.arange(1, self.num_timesteps + 1, dtype=np.float64) / self.num_timesteps
        self.log_alpha_grid = 0.5 * np.log(alphas_cumprod)
        self.t_min = float(self.t_grid[0])
        self.t_max = float(self.t_grid[-1])

    def log_alpha(self, t):
        return _python_scalar(np.interp(t, self.t_grid, self.log_alpha_grid))

    def alpha(self, t):
        return _python_scalar(np.exp(self.log_alpha(t)))

    def sigma(self, t):
        return _python_scalar(np.sqrt(-np.expm1(2.0 * np.asarray(self.log_alpha(t)))))

    def lambda_(self, t):
        log_alpha = np.asarray(self.log_alpha(t))
        return _python_scalar(log_alpha - 0.5 * np.log(-np.expm1(2.0 * log_alpha)))

    def t_of_lambda(self, lam):
        """Inverse of `lambda_`: alpha^2 = sigmoid(2 lambda) for a variance-preserving process."""
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))
        # log_alpha decreases with t; np.interp wants increasing abscissae.
        return _python_scalar(np.interp(log_alpha, self.log_alpha_grid[::-1], self.t_grid[::-1]))

    def model_timestep(self, t):
        """The training-step index (float) an ADM model expects at continuous time t: t_n = (n + 1) / N."""
        return (t - self.t_min) * self.num_timesteps


def _python_scalar(value):
    """Scalars come back as Python floats so that `coefficient * tensor` keeps the tensor's dtype and device."""
    return float(value) if np.ndim(value) == 0 else value


def sampling_times(noise_schedule, skip_type, steps):
    """`steps + 1` decreasing times from t_T = 1 to t_0 = 1/N.

    logSNR is uniform in lambda (DPM-Solver's choice for low resolutions);
    time_uniform is uniform in t (for high resolutions); time_quadratic is
    uniform in sqrt(t) (DDIM's quadratic spacing).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {steps!r}")
    t_start, t_end = noise_schedule.t_max, noise_schedule.t_min
    if skip_type == "logSNR":
        lambdas = np.linspace(noise_schedule.lambda_(t_start), noise_schedule.lambda_(t_end), steps + 1)
        times = noise_schedule.t_of_lambda(lambdas)
    elif skip_type == "time_uniform":
        times = np.linspace(t_start, t_end, steps + 1)
    elif skip_type == "time_quadratic":
        times = np.linspace(np.sqrt(t_start), np.sqrt(t_end), steps + 1) ** 2
    else:
        raise ValueError(f"unknown --skip_type {skip_type!r}; expected one of {', '.join(SKIP_TYPES)}")
    # The round trip through lambda can move the end points by an ulp; they must be exact.
    times = np.asarray(times, dtype=np.float64)
    times[0], times[-1] = t_start, t_end
    return times
