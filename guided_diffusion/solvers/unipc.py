"""UniPC multistep (Zhao et al. 2023), data-prediction form, orders 1-3, B(h) variants bh1 and bh2.

A step from s = t_{i-1} to t, with h = lambda_t - lambda_s and the data-prediction
exponent z = -h, is the DDIM part plus a weighted sum of differences of data
predictions m = x0(x, t):

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^z - 1) m_s - alpha_t B(h) sum_k rho_k D_k,
    D_k = (m_{s_k} - m_s) / r_k,   r_k = (lambda_{s_k} - lambda_s) / h,

where the weights rho solve UniPC's order conditions

    sum_k rho_k r_k^(n-1) = n! * z phi_{n+1}(z) / B(h),   n = 1 .. number of weights,

with phi_1(z) = (e^z - 1) / z and phi_{n+1}(z) = (phi_n(z) - 1/n!) / z.

The predictor UniP-p takes the p - 1 earlier points and is of order p. The
corrector UniC adds the model's prediction at the predicted x_t (r = 1), which
raises the order to p + 1 without an extra evaluation: that prediction is the
one the next step starts from. One-weight systems use rho = 1/2, the paper's
choice for UniP-2 and UniC-1. B(h) = z for bh1, e^z - 1 for bh2; B(h) cancels
from B(h) rho wherever the weights are solved for, so the variants differ only
through those one-weight steps. No corrector
follows the last step, so `steps` steps cost `steps` model evaluations.
"""

import math

import numpy as np

from .dpm_solver import multistep_plan

VARIANTS = ("bh1", "bh2")


def scaled_phi(z, count):
    """[z phi_1(z), ..., z phi_count(z)]: z phi_{n+1}(z) = z phi_n(z) / z - 1/n!."""
    values = [math.expm1(z)]
    for n in range(1, count):
        values.append(values[-1] / z - 1.0 / math.factorial(n))
    return values


def b_of_h(z, variant):
    if variant == "bh1":
        return z
    if variant == "bh2":
        return math.expm1(z)
    raise ValueError(f"unknown UniPC --variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def order_condition_weights(ratios, z, b_value):
    """Weights rho_1..rho_K for the K points at ratios r_1..r_K (the order conditions above)."""
    count = len(ratios)
    if count == 0:
        return []
    if count == 1:
        return [0.5]
    phis = scaled_phi(z, count + 1)
    rhs = np.array([math.factorial(n) * phis[n] / b_value for n in range(1, count + 1)])
    vandermonde = np.array([[r ** (n - 1) for r in ratios] for n in range(1, count + 1)])
    return [float(w) for w in np.linalg.solve(vandermonde, rhs)]


def unipc_step(x, x0_history, t_history, t, order, noise_schedule, variant, data_fn=None):
    """One UniPC step of `order` from t_history[-1] to t, using the last `order` data predictions.

    Without `data_fn` it is the predictor alone and returns (x_t, None). With
    it, the corrector runs and the result is (corrected x_t, data_fn(predicted
    x_t, t)), the latter being the history entry for the next step.
    """
    ns = noise_schedule
    t_s, m_s = t_history[-1], x0_history[-1]
    lam_s = ns.lambda_(t_s)
    h = ns.lambda_(t) - lam_s
    z = -h
    b_value = b_of_h(z, variant)
    alpha_t = ns.alpha(t)

    earlier = range(2, order + 1)
    ratios = [(ns.lambda_(t_history[-k]) - lam_s) / h for k in earlier]
    differences = [(x0_history[-k] - m_s) / r for k, r in zip(earlier, ratios)]

    base = (ns.sigma(t) / ns.sigma(t_s)) * x - (alpha_t * math.expm1(z)) * m_s
    predictor_weights = order_condition_weights(ratios, z, b_value)
    x_t = base - (alpha_t * b_value) * _weighted_sum(predictor_weights, differences, like=x)
    if data_fn is None:
        return x_t, None

    x0_t = data_fn(x_t, t)
    corrector_weights = order_condition_weights(ratios + [1.0], z, b_value)
    corrected = base - (alpha_t * b_value) * _weighted_sum(corrector_weights, differences + [x0_t - m_s], like=x)
    return corrected, x0_t


def _weighted_sum(weights, tensors, like):
    total = like.new_zeros(like.shape)
    for weight, tensor in zip(weights, tensors):
        total = total + weight * tensor
    return total


def sample_unipc(data_fn, x_T, noise_schedule, times, order=3, variant="bh2", lower_order_final=True, progress=False):
    """Integrate from times[0] to times[-1] with UniPC; len(times) - 1 model evaluations."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC --variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    x = x_T
    t_history = [float(times[0])]
    x0_history = [data_fn(x, t_history[0])]
    for t, step_order, is_last in multistep_plan(times, order, lower_order_final, progress):
        x, x0_t = unipc_step(
            x, x0_history, t_history, t, step_order, noise_schedule, variant, data_fn=None if is_last else data_fn
        )
        if not is_last:
            t_history = (t_history + [t])[-order:]
            x0_history = (x0_history + [x0_t])[-order:]
    return x
