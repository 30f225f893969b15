"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++"), data-prediction form, orders 1-3;
and the first DPM-Solver's multistep noise form, orders 1-2.

The probability-flow ODE written with the data prediction x0(x, lambda) has
the exact solution (DPM-Solver++, Lu et al. 2022), from s to t with h = lambda_t - lambda_s:

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda.

Expanding x0 in a Taylor series around lambda_s gives

    x_t = (sigma_t / sigma_s) x_s + alpha_t * sum_k psi_k(h) x0^(k)(lambda_s),
    psi_k(h) = integral_0^h e^{-(h - u)} u^k / k! du,

and the multistep solvers estimate the derivatives from the data predictions
already computed at earlier steps, so each step costs one model evaluation.
Order 1 is DDIM; order 2 is the paper's Algorithm 2 (DPM-Solver++(2M)); order 3
uses the quadratic through the last three predictions with the psi_k above. (The
authors' released multistep third-order update weights x0'' by psi_2 / 2, which
makes it second order; on the Gaussian benchmark this form converges at order 3 or better.)

`sample_dpm_solver` is the first DPM-Solver (Lu et al. 2022, NeurIPS), which
integrates the same ODE written with the noise prediction eps(x, lambda):

    x_t = (alpha_t / alpha_s) x_s - alpha_t * integral_{lambda_s}^{lambda_t} e^-lambda eps(lambda) dlambda,

so eps held constant gives x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s (DDIM again),
and the multistep second order adds -(sigma_t / 2)(e^h - 1) D with D = (eps_{i-1} - eps_{i-2}) / r,
the paper's DPM-Solver-2 update with its intermediate point replaced by the previous step.
It is the sampler the Debias paper's code runs (order 2, time-uniform steps).
"""

import math


def psi_coefficients(h, count):
    """[psi_0(h), ..., psi_{count-1}(h)] by psi_0 = 1 - e^-h, psi_k = h^k / k! - psi_{k-1} (integration by parts)."""
    values = [-math.expm1(-h)]
    for k in range(1, count):
        values.append(h**k / math.factorial(k) - values[-1])
    return values


def first_order_update(x, x0_prev, t_prev, t, noise_schedule):
    """DDIM: x0 held constant over the step."""
    ns = noise_schedule
    h = ns.lambda_(t) - ns.lambda_(t_prev)
    (psi0,) = psi_coefficients(h, 1)
    return (ns.sigma(t) / ns.sigma(t_prev)) * x + (ns.alpha(t) * psi0) * x0_prev


def second_order_update(x, x0_prev, t_prev, t, noise_schedule):
    """DPM-Solver++(2M): x0 linearly extrapolated from the last two steps (Algorithm 2).

    With r = h_{i-1} / h_i the step uses D = (1 + 1/(2r)) x0_{i-1} - 1/(2r) x0_{i-2}
    under the zeroth-order coefficient psi_0(h).
    """
    ns = noise_schedule
    lam_prev2, lam_prev1, lam_t = ns.lambda_(t_prev[-2]), ns.lambda_(t_prev[-1]), ns.lambda_(t)
    h = lam_t - lam_prev1
    r = (lam_prev1 - lam_prev2) / h
    (psi0,) = psi_coefficients(h, 1)
    extrapolated = (1.0 + 0.5 / r) * x0_prev[-1] - (0.5 / r) * x0_prev[-2]
    return (ns.sigma(t) / ns.sigma(t_prev[-1])) * x + (ns.alpha(t) * psi0) * extrapolated


def third_order_update(x, x0_prev, t_prev, t, noise_schedule):
    """Third order: the quadratic through the last three data predictions gives x0' and x0'' at lambda_s.

    With Newton divided differences f01 = (m0 - m1) / h0, f12 = (m1 - m2) / h1,
    f012 = (f01 - f12) / (h0 + h1): x0' = f01 + h0 f012 and x0'' = 2 f012.
    """
    ns = noise_schedule
    lam2, lam1, lam0 = (ns.lambda_(tp) for tp in t_prev[-3:])
    lam_t = ns.lambda_(t)
    h, h0, h1 = lam_t - lam0, lam0 - lam1, lam1 - lam2
    m2, m1, m0 = x0_prev[-3:]
    slope01 = (m0 - m1) / h0
    slope12 = (m1 - m2) / h1
    curvature = (slope01 - slope12) / (h0 + h1)
    psi0, psi1, psi2 = psi_coefficients(h, 3)
    alpha_t = ns.alpha(t)
    return (
        (ns.sigma(t) / ns.sigma(t_prev[-1])) * x
        + (alpha_t * psi0) * m0
        + (alpha_t * psi1) * (slope01 + h0 * curvature)
        + (alpha_t * psi2 * 2.0) * curvature
    )


_UPDATES = {1: first_order_update, 2: second_order_update, 3: third_order_update}


# `lower_order_final="always"`: UniPC's released sampler lowers the last orders in runs of any length.
LOWER_ORDER_FINAL_ALWAYS = "always"


def multistep_orders(steps, order, lower_order_final=True):
    """The order of each of the `steps` steps.

    The first steps lack history, so step i uses at most order i (warm-up).
    With lower_order_final the last steps drop to orders 2 and 1 too, which
    the DPM-Solver++ and UniPC papers find stabilises very short runs: in runs
    of fewer than 10 steps (True, DPM-Solver's rule) or in every run
    (LOWER_ORDER_FINAL_ALWAYS, as UniPC's released sampler does).
    """
    if order not in _UPDATES:
        raise ValueError(f"solver order must be 1, 2 or 3, got {order!r}")
    if lower_order_final not in (True, False, LOWER_ORDER_FINAL_ALWAYS):
        raise ValueError(f"lower_order_final must be True, False or {LOWER_ORDER_FINAL_ALWAYS!r}, got {lower_order_final!r}")
    lower_final = lower_order_final == LOWER_ORDER_FINAL_ALWAYS or (lower_order_final is True and steps < 10)
    orders = []
    for step in range(1, steps + 1):
        step_order = min(order, step)
        if lower_final:
            step_order = min(step_order, steps + 1 - step)
        orders.append(step_order)
    return orders


def multistep_plan(times, order, lower_order_final=True, progress=False):
    """For each step from times[0] to times[-1]: (its end time, its order, whether it is the last)."""
    steps = len(times) - 1
    orders = multistep_orders(steps, order, lower_order_final)
    step_indices = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm

        step_indices = tqdm(step_indices)
    for step in step_indices:
        yield float(times[step]), orders[step - 1], step == steps


def _integrate(updates, model_fn, x_T, noise_schedule, times, order, lower_order_final, progress):
    """The multistep loop: `updates[k](x, predictions, their times, t, noise_schedule)` takes a step of order k
    with the last predictions of `model_fn`; one model evaluation per step but the last."""
    x = x_T
    t_history = [float(times[0])]
    history = [model_fn(x, t_history[0])]
    for t, step_order, is_last in multistep_plan(times, order, lower_order_final, progress):
        x = updates[step_order](x, history, t_history, t, noise_schedule)
        if not is_last:
            t_history = (t_history + [t])[-order:]
            history = (history + [model_fn(x, t)])[-order:]
    return x


def sample_dpm_solver_pp(data_fn, x_T, noise_schedule, times, order=3, lower_order_final=True, progress=False):
    """Integrate from times[0] to times[-1] with DPM-Solver++ multistep; len(times) - 1 model evaluations.

    `data_fn(x, t)` returns the data prediction x0 at continuous time t.
    """
    updates = {
        1: lambda x, x0_prev, t_prev, t, ns: first_order_update(x, x0_prev[-1], t_prev[-1], t, ns),
        2: second_order_update,
        3: third_order_update,
    }
    return _integrate(updates, data_fn, x_T, noise_schedule, times, order, lower_order_final, progress)


def noise_first_order_update(x, eps_prev, t_prev, t, noise_schedule):
    """DDIM in the noise form: eps held constant over the step."""
    ns = noise_schedule
    h = ns.lambda_(t) - ns.lambda_(t_prev)
    return (ns.alpha(t) / ns.alpha(t_prev)) * x - (ns.sigma(t) * math.expm1(h)) * eps_prev


def noise_second_order_update(x, eps_prev, t_prev, t, noise_schedule):
    """Multistep DPM-Solver-2: with r = h_{i-1} / h_i and D = (eps_{i-1} - eps_{i-2}) / r,
    x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) (eps_{i-1} + D / 2)."""
    ns = noise_schedule
    lam_prev2, lam_prev1, lam_t = ns.lambda_(t_prev[-2]), ns.lambda_(t_prev[-1]), ns.lambda_(t)
    h = lam_t - lam_prev1
    r = (lam_prev1 - lam_prev2) / h
    slope = (eps_prev[-1] - eps_prev[-2]) / r
    return (ns.alpha(t) / ns.alpha(t_prev[-1])) * x - (ns.sigma(t) * math.expm1(h)) * (eps_prev[-1] + 0.5 * slope)


def sample_dpm_solver(eps_fn, x_T, noise_schedule, times, order=2, lower_order_final=True, progress=False):
    """Integrate from times[0] to times[-1] with multistep DPM-Solver (noise form), orders 1-2;
    len(times) - 1 model evaluations. `eps_fn(x, t)` returns the noise prediction at continuous time t."""
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver (noise form) has orders 1 and 2, got {order!r}")
    updates = {
        1: lambda x, eps_prev, t_prev, t, ns: noise_first_order_update(x, eps_prev[-1], t_prev[-1], t, ns),
        2: noise_second_order_update,
    }
    return _integrate(updates, eps_fn, x_T, noise_schedule, times, order, lower_order_final, progress)
