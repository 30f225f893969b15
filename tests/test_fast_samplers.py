"""DPM-Solver++ and UniPC against closed forms: Gaussian data, whose exact noise predictor and
probability-flow ODE solution are known, and ADM's own DDIM loop."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from guided_diffusion import samplers
from guided_diffusion.solvers.dpm_solver import (
    multistep_orders,
    psi_coefficients,
    sample_dpm_solver,
    sample_dpm_solver_pp,
)
from guided_diffusion.solvers.fast_samplers import (
    data_prediction,
    dynamic_threshold,
    eps_model,
    fast_sample,
    mean_prediction,
    solve,
)
from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)
from tests.gaussian_oracle import ExactGaussianModel, GaussianData, GivenStart
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.solvers.noise_schedule import DiscreteNoiseSchedule, sampling_times
from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.sampling import sampling_defaults
from guided_diffusion.unet import UNetModel
from guided_diffusion.solvers.unipc import sample_unipc, scaled_phi

N = 1000
SAMPLERS = [  # (name, order, variant, order of convergence)
    ("dpm_solver", 1, "bh2", 1),
    ("dpm_solver", 2, "bh2", 2),
    ("dpm_solver", 3, "bh2", 3),
    ("unipc", 1, "bh1", 2),
    ("unipc", 2, "bh1", 3),
    ("unipc", 3, "bh1", 4),
    ("unipc", 1, "bh2", 2),
    ("unipc", 2, "bh2", 3),
    ("unipc", 3, "bh2", 4),
]


def solver_of(name, variant="bh2"):
    """(solver, its options) for the registry's fast sampler `name`."""
    return (sample_unipc, {"variant": variant}) if name == "unipc" else (sample_dpm_solver_pp, {})


def solve_with(name, data_fn, x_T, schedule, steps, order=3, skip_type="logSNR", variant="bh2"):
    solver, options = solver_of(name, variant)
    return solve(solver, data_fn, x_T, schedule, steps, order, skip_type, **options)


def fast_sample_with(name, model, diffusion, shape=None, variant="bh2", **kwargs):
    solver, options = solver_of(name, variant)
    return fast_sample(solver, model, diffusion, shape, **kwargs, **options)


def alphas_cumprod(schedule="linear", steps=N):
    return np.cumprod(1.0 - get_named_beta_schedule(schedule, steps))


def image_gaussian():
    """N(m, S) over (1, 2, 2) images: S with eigenvalues 0.02..0.9 in a random orthonormal basis."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    covariance = basis @ np.diag([0.02, 0.1, 0.4, 0.9]) @ basis.T
    return GaussianData(np.array([0.3, -0.5, 0.1, 0.6]), (covariance + covariance.T) / 2)


def diffusion_for(model_mean_type=ModelMeanType.EPSILON, schedule="linear", steps=N):
    return GaussianDiffusion(
        betas=get_named_beta_schedule(schedule, steps),
        model_mean_type=model_mean_type,
        model_var_type=ModelVarType.FIXED_SMALL,
        loss_type=LossType.MSE,
    )


def start_noise(batch, seed=0):
    return torch.randn(batch, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_endpoint(data, schedule, x_T, labels=None):
    start = (schedule.alpha(schedule.t_max), schedule.sigma(schedule.t_max))
    end = (schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min))
    return data.ode_map(x_T, start, end, labels=labels)


def mean_error(x, reference):
    return (x - reference).flatten(1).norm(dim=1).mean().item()


def exact_data_fn(data, schedule, model_mean_type=ModelMeanType.EPSILON, learned_sigma=False, model_kwargs=None):
    model = ExactGaussianModel(data, np.exp(2 * schedule.log_alpha_grid), model_mean_type, learned_sigma)
    return data_prediction(eps_model(model, model_mean_type, schedule, model_kwargs), schedule)


# ---- the continuous-time schedule -------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_interpolates_the_discrete_steps(name):
    cumprod = alphas_cumprod(name)
    schedule = DiscreteNoiseSchedule(cumprod)
    steps = np.array([0, 1, 250, 998, 999])
    t_steps = (steps + 1) / N
    np.testing.assert_allclose(schedule.alpha(t_steps) ** 2, cumprod[steps], rtol=1e-12)
    np.testing.assert_allclose(schedule.model_timestep(t_steps), steps, atol=1e-9)
    middle = (t_steps[:-1] + 0.5 / N)
    expected_log_alpha = 0.25 * (np.log(cumprod[steps[:-1]]) + np.log(cumprod[steps[:-1] + 1]))
    np.testing.assert_allclose(schedule.log_alpha(middle), expected_log_alpha, rtol=1e-12)

    t = np.random.default_rng(1).uniform(1 / N, 1, size=200)
    np.testing.assert_allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(schedule.lambda_(t), np.log(schedule.alpha(t) / schedule.sigma(t)), rtol=1e-10)
    np.testing.assert_allclose(schedule.t_of_lambda(schedule.lambda_(t)), t, rtol=1e-9)
    assert (np.diff(schedule.lambda_(np.sort(t))) < 0).all()


def test_schedule_rejects_bad_alphas():
    with pytest.raises(ValueError, match="decreasing"):
        DiscreteNoiseSchedule([0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match="between 0 and 1"):
        DiscreteNoiseSchedule([1.0, 0.5])


@pytest.mark.parametrize("skip_type", ["logSNR", "time_uniform", "time_quadratic"])
def test_sampling_times(skip_type):
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    times = sampling_times(schedule, skip_type, 12)
    assert len(times) == 13 and times[0] == 1.0 and times[-1] == 1 / N
    assert (np.diff(times) < 0).all()
    uniform_in = {
        "logSNR": schedule.lambda_(times),
        "time_uniform": times,
        "time_quadratic": np.sqrt(times),
    }[skip_type]
    gaps = np.diff(uniform_in)
    np.testing.assert_allclose(gaps, gaps[0], rtol=1e-6)


def test_sampling_times_reject_bad_input():
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    with pytest.raises(ValueError, match="skip_type"):
        sampling_times(schedule, "karras", 10)
    with pytest.raises(ValueError, match="number of steps must be a positive integer"):
        sampling_times(schedule, "logSNR", 0)


# ---- solver coefficients ------------------------------------------------------


@pytest.mark.parametrize("h", [0.02, 0.7, 2.5])
def test_psi_coefficients_are_the_taylor_integrals(h):
    for k, value in enumerate(psi_coefficients(h, 3)):
        integral, _ = quad(lambda u: math.exp(-(h - u)) * u**k / math.factorial(k), 0.0, h)
        assert value == pytest.approx(integral, rel=1e-9)


@pytest.mark.parametrize("z", [-0.05, -0.8, -3.0])
def test_scaled_phi_are_the_exponential_integrator_functions(z):
    for k, value in enumerate(scaled_phi(z, 4), start=1):
        # phi_k(z) = integral_0^1 e^{(1 - s) z} s^{k-1} / (k-1)! ds
        integral, _ = quad(lambda s: math.exp((1 - s) * z) * s ** (k - 1) / math.factorial(k - 1), 0.0, 1.0)
        assert value == pytest.approx(z * integral, rel=1e-7)


def test_multistep_orders_warm_up_and_lower_order_final():
    assert multistep_orders(5, 3) == [1, 2, 3, 2, 1]
    assert multistep_orders(5, 3, lower_order_final=False) == [1, 2, 3, 3, 3]
    assert multistep_orders(12, 3) == [1, 2] + [3] * 10
    assert multistep_orders(6, 2) == [1, 2, 2, 2, 2, 1]
    with pytest.raises(ValueError, match="order"):
        multistep_orders(10, 4)


# ---- the model wrapper ----------------------------------------------------------


class RecordingModel(torch.nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.calls = []

    def forward(self, x, timesteps, y=None):
        self.calls.append((timesteps.clone(), y))
        return torch.ones(x.shape[0], self.out_channels, *x.shape[2:], dtype=x.dtype)


def test_wrapper_passes_adm_indices_and_labels():
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    model = RecordingModel(out_channels=2)
    labels = torch.tensor([3, 1])
    eps_fn = eps_model(model, ModelMeanType.EPSILON, schedule, {"y": labels})
    x = torch.zeros(2, 1, 2, 2)
    for t, index in [(1.0, 999.0), (1 / N, 0.0), (0.5 + 0.5 / N, 499.5)]:
        eps_fn(x, t)
        timesteps, y = model.calls[-1]
        torch.testing.assert_close(timesteps, torch.full((2,), index))
        assert y is labels

    short = DiscreteNoiseSchedule(alphas_cumprod(steps=500))
    eps_model(model, ModelMeanType.EPSILON, short, rescale_timesteps=True)(x, 1.0)
    torch.testing.assert_close(model.calls[-1][0], torch.full((2,), 998.0))


def test_wrapper_rejects_unusable_models():
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    with pytest.raises(ValueError, match="PREVIOUS_X"):
        eps_model(RecordingModel(1), ModelMeanType.PREVIOUS_X, schedule)
    with pytest.raises(ValueError, match="channels"):
        eps_model(RecordingModel(3), ModelMeanType.EPSILON, schedule)(torch.zeros(2, 1, 2, 2), 0.5)
    x = torch.zeros(2, 3, 4, 4)
    learned_sigma_output = torch.arange(192.0).view(2, 6, 4, 4)
    torch.testing.assert_close(mean_prediction(learned_sigma_output, x), learned_sigma_output[:, :3])


@pytest.mark.parametrize("name,order,variant", [("dpm_solver", 3, "bh2"), ("unipc", 2, "bh1")])
@pytest.mark.parametrize(
    "model_mean_type,learned_sigma",
    [(ModelMeanType.START_X, False), (ModelMeanType.VELOCITY, False), (ModelMeanType.EPSILON, True)],
)
def test_x0_v_and_learned_sigma_models_sample_like_eps(name, order, variant, model_mean_type, learned_sigma):
    data = image_gaussian()
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    x_T = start_noise(64)
    reference = solve_with(name, exact_data_fn(data, schedule), x_T, schedule, 12, order, "logSNR", variant)
    converted = solve_with(
        name, exact_data_fn(data, schedule, model_mean_type, learned_sigma), x_T, schedule, 12, order, "logSNR", variant
    )
    torch.testing.assert_close(converted, reference, rtol=1e-9, atol=1e-9)


# ---- samplers against closed forms ----------------------------------------------


def test_first_order_is_adm_ddim():
    """999 time-uniform DPM-Solver++(1) steps land on ADM's DDIM loop at index 0, step by step the same update."""
    data = image_gaussian()
    diffusion = diffusion_for()
    schedule = DiscreteNoiseSchedule(diffusion.alphas_cumprod)
    model = ExactGaussianModel(data, diffusion.alphas_cumprod)
    x_T = start_noise(8)
    ours = solve_with("dpm_solver", data_prediction(eps_model(model, ModelMeanType.EPSILON, schedule), schedule),
                 x_T, schedule, N - 1, order=1, skip_type="time_uniform")
    adm = list(diffusion.ddim_sample_loop_progressive(model, x_T.shape, noise=x_T, clip_denoised=False))
    torch.testing.assert_close(ours, adm[N - 2]["sample"].double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,order,variant", [("dpm_solver", 2, "bh2"), ("dpm_solver", 3, "bh2"),
                                                ("unipc", 3, "bh1"), ("unipc", 3, "bh2"), ("unipc", 2, "bh2")])
@pytest.mark.parametrize("steps", [10, 20])
def test_samples_reach_the_data_distribution(name, order, variant, steps):
    data = image_gaussian()
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    batch = 20000
    samples = solve_with(name, exact_data_fn(data, schedule), start_noise(batch, seed=1), schedule, steps, order,
                    "logSNR", variant).flatten(1).numpy()
    alpha0, sigma0 = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
    target_mean = alpha0 * data.means[0]
    target_cov = alpha0**2 * data.covariance + sigma0**2 * np.eye(4)
    # Sampling error alone: std of a mean is <= sqrt(0.9 / 20000) = 0.0067, of a covariance entry <= 0.009;
    # the rest is discretisation error (DDIM misses by 0.31 at 10 steps and 0.17 at 20).
    np.testing.assert_allclose(samples.mean(0), target_mean, atol=0.03)
    np.testing.assert_allclose(np.cov(samples.T), target_cov, atol={10: 0.08, 20: 0.03}[steps])


@pytest.mark.parametrize("name,order,variant,convergence", SAMPLERS)
def test_error_against_exact_ode_shrinks_at_the_expected_order(name, order, variant, convergence):
    data = image_gaussian()
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    x_T = start_noise(256, seed=2)
    exact = exact_endpoint(data, schedule, x_T)
    steps = [10, 20, 40]
    errors = [
        mean_error(solve_with(name, exact_data_fn(data, schedule), x_T, schedule, s, order, "logSNR", variant), exact)
        for s in steps
    ]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert errors[0] > errors[1] > errors[2]
    if convergence == 1:
        assert -1.2 < slope < -0.8
    else:
        assert slope < -(convergence - 0.6)


def test_class_conditional_samples_follow_their_class():
    """fast_sample end to end on class-conditional Gaussian data: y reaches the model and selects the mean."""
    rng = np.random.default_rng(3)
    data = GaussianData(rng.normal(scale=0.8, size=(3, 4)), image_gaussian().covariance)
    diffusion = diffusion_for()
    model = ExactGaussianModel(data, diffusion.alphas_cumprod)
    schedule = DiscreteNoiseSchedule(diffusion.alphas_cumprod)
    labels = torch.tensor([0, 1, 2, 2, 1, 0] * 10)
    x_T = start_noise(len(labels), seed=4)
    exact = exact_endpoint(data, schedule, x_T, labels=labels)
    for name, variant in [("dpm_solver", "bh2"), ("unipc", "bh1")]:
        samples = fast_sample_with(name, model, diffusion, x_T=x_T, steps=20, order=3, skip_type="logSNR",
                                   variant=variant, model_kwargs={"y": labels})
        assert mean_error(samples, exact) < 1e-2
        swapped = exact_endpoint(data, schedule, x_T, labels=(labels + 1) % 3)
        assert mean_error(samples, swapped) > 0.3


def test_fast_sample_on_tiny_unet_is_deterministic_per_index():
    torch.manual_seed(0)
    unet = UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_classes=4, num_head_channels=8)
    with torch.no_grad():  # ADM zero-initialises output layers; a network that ignores its input tests nothing
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    unet.eval()
    diffusion = diffusion_for(schedule="cosine")
    labels = torch.tensor([0, 3, 1])

    def run(name, indices, y):
        return fast_sample_with(name, unet, diffusion, (len(indices), 3, 8, 8), steps=4, order=2, variant="bh2",
                                model_kwargs={"y": y}, noise_source=IndexedNoise(seed=7, indices=indices),
                                thresholding=True)

    for name in ["dpm_solver", "unipc"]:
        first = run(name, [0, 1, 2], labels)
        assert first.shape == (3, 3, 8, 8) and torch.isfinite(first).all() and first.abs().max() < 2.0
        assert torch.equal(first, run(name, [0, 1, 2], labels))
        torch.testing.assert_close(run(name, [1], labels[1:2]), first[1:2], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(run(name, [0, 1, 2], (labels + 1) % 4), first, atol=1e-4)


def test_fast_sample_counts_model_evaluations():
    data = image_gaussian()
    diffusion = diffusion_for()
    model = ExactGaussianModel(data, diffusion.alphas_cumprod)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    for name, order in [("dpm_solver", 1), ("dpm_solver", 3), ("unipc", 3), ("unipc", 1)]:
        for steps in [5, 12]:
            calls.clear()
            fast_sample_with(name, model, diffusion, x_T=start_noise(2), steps=steps, order=order)
            assert len(calls) == steps


def test_fast_sample_rejects_bad_configuration():
    data = image_gaussian()
    diffusion = diffusion_for()
    model = ExactGaussianModel(data, diffusion.alphas_cumprod)
    x_T = start_noise(2)
    with pytest.raises(ValueError, match="variant"):
        fast_sample_with("unipc", model, diffusion, x_T=x_T, variant="bh3")
    with pytest.raises(ValueError, match="shape or x_T"):
        fast_sample_with("unipc", model, diffusion)
    spaced = SpacedDiffusion(
        use_timesteps=range(0, N, 10), betas=get_named_beta_schedule("linear", N),
        model_mean_type=ModelMeanType.EPSILON, model_var_type=ModelVarType.FIXED_SMALL, loss_type=LossType.MSE,
    )
    with pytest.raises(ValueError, match="unspaced"):
        fast_sample_with("dpm_solver", model, spaced, x_T=x_T)


def test_dynamic_threshold_is_the_clipped_quantile():
    x0 = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(5)) * 2.0
    x0[2] = x0[2].clamp(-0.9, 0.9)
    scale = torch.quantile(x0.abs().flatten(1), 0.9, dim=1, interpolation="higher").clamp(min=1.0).view(-1, 1, 1, 1)
    thresholded = dynamic_threshold(x0, 0.9)
    torch.testing.assert_close(thresholded, torch.maximum(torch.minimum(x0, scale), -scale) / scale)
    assert thresholded.abs().max() <= 1.0
    torch.testing.assert_close(thresholded[2], x0[2])


# ---- the paper's own samplers, step by step -----------------------------------------


class RecordingGaussianModel(ExactGaussianModel):
    """The exact model, keeping every call's input, timestep index and noise prediction."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def forward(self, x, timesteps, y=None):
        eps = super().forward(x, timesteps, y)
        self.calls.append((x.clone(), float(timesteps[0]), eps.clone()))
        return eps


def run_registered(name, steps, model, diffusion, x_T):
    flags = {**sampling_defaults(), "sampler": name, "timestep_respacing": str(steps)}
    samplers.check_options(name, flags)
    return samplers.get_sampler(name).run(model, diffusion, x_T.shape, model_kwargs={}, noise_source=GivenStart(x_T),
                                          device=torch.device("cpu"), flags=flags)


def coefficients_at(index, alphas_cumprod):
    """(alpha, sigma, lambda) at a fractional ADM step index, log alpha linear between steps."""
    log_alpha = np.interp(index, np.arange(len(alphas_cumprod)), 0.5 * np.log(alphas_cumprod))
    alpha, sigma = math.exp(log_alpha), math.sqrt(-math.expm1(2 * log_alpha))
    return alpha, sigma, math.log(alpha / sigma)


def test_paper_dpm_solver_is_dpm_solver_2_in_noise_form_on_a_time_uniform_grid():
    diffusion = diffusion_for()
    model = RecordingGaussianModel(image_gaussian(), diffusion.alphas_cumprod)
    steps, x_T = 10, start_noise(3, seed=5)
    final = run_registered("paper_dpm_solver", steps, model, diffusion, x_T)

    # Step i starts at t_i = 1 - i (1 - 1/N) / steps, ADM index (t_i - 1/N) N.
    assert [index for _, index, _ in model.calls] == pytest.approx([(N - 1) * (1 - i / steps) for i in range(steps)])
    (x0, i0, e0), (x1, i1, e1), (x2, i2, _) = model.calls[:3]
    (a0, s0, l0), (a1, s1, l1), (a2, s2, l2) = (coefficients_at(i, diffusion.alphas_cumprod) for i in (i0, i1, i2))
    # First step, DDIM in the noise form: x_1 = (a_1 / a_0) x_0 - s_1 (e^h - 1) eps_0.
    torch.testing.assert_close(x1, a1 / a0 * x0 - s1 * math.expm1(l1 - l0) * e0, rtol=1e-12, atol=1e-12)
    # Second step, multistep DPM-Solver-2: eps_1 + (eps_1 - eps_0) / (2 r), r = h_1 / h_2.
    r = (l1 - l0) / (l2 - l1)
    expected = a2 / a1 * x1 - s2 * math.expm1(l2 - l1) * (e1 + (e1 - e0) / (2 * r))
    torch.testing.assert_close(x2, expected, rtol=1e-12, atol=1e-12)
    assert len(model.calls) == steps and torch.isfinite(final).all()


def test_paper_unipc_is_unipc_3_bh1_on_a_time_uniform_grid():
    diffusion = diffusion_for()
    model = RecordingGaussianModel(image_gaussian(), diffusion.alphas_cumprod)
    steps, x_T = 12, start_noise(3, seed=6)
    run_registered("paper_unipc", steps, model, diffusion, x_T)
    assert [index for _, index, _ in model.calls] == pytest.approx([(N - 1) * (1 - i / steps) for i in range(steps)])
    (x0, i0, e0), (x1_pred, i1, e1), (x2_pred, i2, _) = model.calls[:3]
    (a0, s0, l0), (a1, s1, l1), (a2, s2, l2) = (coefficients_at(i, diffusion.alphas_cumprod) for i in (i0, i1, i2))
    m0, m1 = (x0 - s0 * e0) / a0, (x1_pred - s1 * e1) / a1  # data predictions

    # First step: the predictor is DDIM in the data form; the model sees its result.
    z1 = -(l1 - l0)
    ddim_1 = s1 / s0 * x0 - a1 * math.expm1(z1) * m0
    torch.testing.assert_close(x1_pred, ddim_1, rtol=1e-12, atol=1e-12)
    # UniC-1 corrects it with rho = 1/2 and bh1's B(h) = -h.
    x1 = ddim_1 - a1 * z1 * 0.5 * (m1 - m0)
    # Second step: UniP-2 from the corrected x_1, rho = 1/2 on D = (m_0 - m_1) / r, r = (l_0 - l_1) / h.
    z2 = -(l2 - l1)
    r = (l0 - l1) / (l2 - l1)
    expected = s2 / s1 * x1 - a2 * math.expm1(z2) * m1 - a2 * z2 * 0.5 * (m0 - m1) / r
    torch.testing.assert_close(x2_pred, expected, rtol=1e-12, atol=1e-12)


def test_lower_order_final_always_is_unipc_release_rule():
    assert multistep_orders(12, 3, lower_order_final="always") == [1, 2] + [3] * 8 + [2, 1]
    assert multistep_orders(12, 3, lower_order_final=True) == [1, 2] + [3] * 10
    with pytest.raises(ValueError, match="lower_order_final"):
        multistep_orders(12, 3, lower_order_final="sometimes")


def test_noise_form_dpm_solver_converges_at_second_order():
    data = image_gaussian()
    schedule = DiscreteNoiseSchedule(alphas_cumprod())
    x_T = start_noise(256, seed=2)
    exact = exact_endpoint(data, schedule, x_T)
    model = ExactGaussianModel(data, np.exp(2 * schedule.log_alpha_grid))
    eps_fn = eps_model(model, ModelMeanType.EPSILON, schedule)
    steps = [10, 20, 40]
    errors = [mean_error(solve(sample_dpm_solver, eps_fn, x_T, schedule, s, 2, "logSNR"), exact) for s in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert errors[0] > errors[1] > errors[2] and slope < -1.4
