"""The field's weightings and noise-level densities (docs/weightings.md), each against its source's own form.

Every expected value here is computed from the source's variable (EDM's sigma, k-diffusion's sigma_data,
Kingma & Gao's lambda integral, SD3's logit t) without going through guided_diffusion.weighting's formulas.
"""

import math

import numpy as np
import pytest
import torch as th
from scipy import stats

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.noise_levels import NOISE_LEVEL_DENSITIES, LogSnrDensity, effective_eps_weights
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.weighting import LossWeighting, timestep_loss_weights

LINEAR_AC = np.cumprod(1 - gd.get_named_beta_schedule("linear", 1000))
SNR = LINEAR_AC / (1 - LINEAR_AC)
LAMBDA = np.log(SNR)
SIGMA = np.sqrt((1 - LINEAR_AC) / LINEAR_AC)  # the VE noise level of x_t / sqrt(a_t)


def errors_at(t, seed=0, shape=(4, 3, 8, 8)):
    """x0, eps, a perturbed eps prediction, x0_hat it implies, at step t of the linear schedule."""
    g = th.Generator().manual_seed(seed)
    x0 = th.rand(shape, generator=g, dtype=th.float64) * 2 - 1
    eps = th.randn(shape, generator=g, dtype=th.float64)
    eps_hat = eps + 0.3 * th.randn(shape, generator=g, dtype=th.float64)
    a = float(LINEAR_AC[t])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    x0_hat = (x_t - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
    return x0, eps, eps_hat, x0_hat


@pytest.mark.parametrize("t", [0, 100, 500, 900, 999])
@pytest.mark.parametrize("name", ["edm", "edm2"])
def test_edm_weight_equals_edm_loss_on_the_same_x0_error(t, name):
    sigma_data = 0.5
    x0, eps, eps_hat, x0_hat = errors_at(t)
    sigma = SIGMA[t]
    edm_loss = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2 * th.mean((x0_hat - x0) ** 2)  # Karras 2022, Eq. 8
    ours = timestep_loss_weights(name, LINEAR_AC)[t] * th.mean((eps_hat - eps) ** 2)
    assert float(ours) == pytest.approx(float(edm_loss), rel=1e-9)


@pytest.mark.parametrize("t", [0, 100, 500, 900, 999])
def test_soft_min_snr_equals_k_diffusion_loss_with_gamma_one_over_sigma_data_squared(t):
    sigma_data = 0.5
    x0, eps, eps_hat, x0_hat = errors_at(t, seed=1)
    sigma = SIGMA[t]
    # k-diffusion: c_weight on the error of the network output F = (D - c_skip x) / c_out.
    c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    c_weight = (sigma * sigma_data) ** 2 / (sigma**2 + sigma_data**2) ** 2
    k_loss = c_weight * th.mean(((x0_hat - x0) / c_out) ** 2)
    w = timestep_loss_weights("soft_min_snr", LINEAR_AC, soft_min_snr_gamma=sigma_data**-2)
    assert float(w[t] * th.mean((eps_hat - eps) ** 2)) == pytest.approx(float(k_loss), rel=1e-9)


@pytest.mark.parametrize("t", [1, 100, 500, 900, 999])
@pytest.mark.parametrize("bias", [-2.0, 0.0, 3.0])
def test_sigmoid_is_kingma_gao_weight_times_t_dlambda(t, bias):
    width = math.log(LINEAR_AC[t - 1] / (1 - LINEAR_AC[t - 1])) - math.log(LINEAR_AC[t] / (1 - LINEAR_AC[t]))
    expected = 1000 * width / (1 + math.exp(LAMBDA[t] - bias))
    assert timestep_loss_weights("sigmoid", LINEAR_AC, sigmoid_bias=bias)[t] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("bias", [-2.0, 0.0, 3.0])
def test_sigmoid_under_uniform_t_is_the_lambda_integral(bias):
    """(1/T) sum_t w(t) * 1 approximates the integral of sigmoid(b - lambda) over ADM's lambda range (a softplus)."""
    w = timestep_loss_weights("sigmoid", LINEAR_AC, sigmoid_bias=bias)
    softplus = lambda x: math.log1p(math.exp(x))
    integral = softplus(bias - LAMBDA[-1]) - softplus(bias - LAMBDA[0])
    assert w.mean() == pytest.approx(integral, rel=0.02)


def test_every_density_is_the_papers_own_variable():
    edm = stats.norm(-1.2, 1.2)  # ln sigma (Karras 2022)
    edm2 = stats.norm(-0.4, 1.0)  # ln sigma (Karras 2024)
    sd3 = stats.norm(0.0, 1.0)  # logit t (Esser 2024)
    t_rf = 1 / (1 + np.sqrt(SNR))  # rectified flow: SNR = ((1 - t)/t)^2
    # p(lambda) = p_x(x(lambda)) |dx/dlambda|: x = ln sigma = -lambda/2, x = logit t_rf = -lambda/2.
    papers = {
        "edm-lognormal": edm.pdf(np.log(SIGMA)) / 2,
        "edm2-lognormal": edm2.pdf(np.log(SIGMA)) / 2,
        "logit-normal": sd3.pdf(np.log(t_rf / (1 - t_rf))) / 2,
        "laplace": stats.laplace(0.0, 0.5).pdf(LAMBDA),
    }
    assert set(papers) == set(NOISE_LEVEL_DENSITIES)
    for name, expected in papers.items():
        np.testing.assert_allclose(NOISE_LEVEL_DENSITIES[name].pdf(LAMBDA), expected, rtol=1e-9, err_msg=name)


def independent_probabilities(name):
    pdf = {"edm-lognormal": stats.norm(2.4, 2.4).pdf, "edm2-lognormal": stats.norm(0.8, 2.0).pdf,
           "logit-normal": stats.norm(0.0, 2.0).pdf, "laplace": stats.laplace(0.0, 0.5).pdf}[name]
    widths = np.abs(np.diff(LAMBDA, prepend=2 * LAMBDA[0] - LAMBDA[1]))
    mass = pdf(LAMBDA) * widths
    return mass / mass.sum()


@pytest.mark.parametrize("name", sorted(NOISE_LEVEL_DENSITIES))
@pytest.mark.parametrize("importance", [False, True])
def test_draws_follow_p_t_chi_square(name, importance):
    diffusion = create_gaussian_diffusion(steps=1000)
    sampler = create_named_schedule_sampler(name + ("-importance" if importance else ""), diffusion)
    p = independent_probabilities(name)
    np.testing.assert_allclose(sampler.weights(), p, rtol=1e-9)
    np.random.seed(0)
    t, weights = sampler.sample(20000, "cpu")
    np.testing.assert_allclose(weights.numpy(), 1 / (1000 * p[t.numpy()]) if importance else 1.0, rtol=1e-5)
    # Bins of about equal probability, so that every expected count is large.
    edges = np.searchsorted(np.cumsum(p), np.linspace(0, 1, 21)[1:-1])
    observed = np.bincount(np.searchsorted(edges, t.numpy(), side="right"), minlength=20)
    expected = np.array([b.sum() for b in np.split(p, edges)]) * 20000
    assert observed.sum() == 20000 and expected.min() > 100
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("name", ["edm-lognormal-importance", "laplace-importance", "logit-normal-importance"])
def test_importance_corrected_expectation_equals_uniforms(name):
    diffusion = create_gaussian_diffusion(steps=1000, weight_schedule="debias")
    per_step_loss = diffusion.mse_weights * (1 + np.sin(np.arange(1000) / 50.0) ** 2)
    sampler = create_named_schedule_sampler(name, diffusion)
    p = sampler.weights()
    # The importance weight of each step as the sampler returns it (test_draws_follow_p_t_chi_square
    # checks the draws): one draw per step is read off a seeded sample that hits every step's weight.
    np.random.seed(1)
    t, weights = sampler.sample(20000, "cpu")
    importance = np.full(1000, np.nan)
    importance[t.numpy()] = weights.numpy()
    seen = ~np.isnan(importance)
    np.testing.assert_allclose(importance[seen], 1 / (1000 * p[seen]), rtol=1e-5)
    # E_p[L(t) / (T p(t))] = (1/T) sum_t L(t): the objective of uniform t.
    assert np.sum(p / (1000 * p) * per_step_loss) == pytest.approx(per_step_loss.mean(), rel=1e-12)


def test_objective_density_weighs_eps_by_t_p_t_w_t():
    diffusion = create_gaussian_diffusion(steps=1000, weight_schedule="edm")
    mse = 1 + np.cos(np.arange(1000) / 70.0) ** 2
    sampler = create_named_schedule_sampler("edm-lognormal", diffusion)
    effective = effective_eps_weights(diffusion.mse_weights, "edm-lognormal", diffusion.alphas_cumprod)
    np.testing.assert_allclose(effective, 1000 * independent_probabilities("edm-lognormal") * diffusion.mse_weights)
    np.random.seed(2)
    t, weights = sampler.sample(200000, "cpu")
    draws = weights.numpy() * (diffusion.mse_weights * mse)[t.numpy()]
    target = np.mean(effective * mse)  # uniform t's average with the effective weight
    assert abs(draws.mean() - target) < 4 * draws.std() / math.sqrt(len(draws))
    assert np.array_equal(effective_eps_weights(diffusion.mse_weights, "edm-lognormal-importance", LINEAR_AC),
                          diffusion.mse_weights)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(name="edm", sigma_data=0.0), "--sigma_data 0: out of range; expected sigma_data > 0 (valid range (0, inf))"),
        (dict(name="edm2", sigma_data=-0.5), "--sigma_data -0.5: out of range; expected sigma_data > 0"),
        (dict(name="soft_min_snr", soft_min_snr_gamma=0.0), "--soft_min_snr_gamma 0: out of range; expected soft_min_snr_gamma > 0"),
        (dict(name="sigmoid", sigmoid_bias=float("inf")), "--sigmoid_bias inf: out of range; expected sigmoid_bias finite"),
    ],
)
def test_bad_weighting_parameters_are_refused_in_one_line(flags, message):
    with pytest.raises(ValueError) as e:
        LossWeighting.from_flags(**flags)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("family, loc, scale, message", [
    ("normal", 0.0, 0.0, "noise-level density normal: spread 0 out of range; expected a spread > 0"),
    ("laplace", 0.0, -1.0, "noise-level density laplace: spread -1 out of range; expected a spread > 0"),
    ("normal", float("nan"), 1.0, "noise-level density normal: location nan is not finite"),
    ("cauchy", 0.0, 1.0, "unknown noise-level density family 'cauchy'; expected one of normal, laplace"),
])
def test_bad_density_parameters_are_refused_in_one_line(family, loc, scale, message):
    with pytest.raises(ValueError) as e:
        LogSnrDensity(family, loc, scale)
    assert str(e.value) == message


def test_unknown_density_sampler_lists_the_densities():
    with pytest.raises(ValueError) as e:
        create_named_schedule_sampler("edm-normal", create_gaussian_diffusion(steps=100))
    assert "'edm-lognormal'" in str(e.value) and "'laplace-importance'" in str(e.value)


@pytest.mark.parametrize("t", [10, 100, 500, 900, 999])
def test_debias_for_a_v_model_is_sqrt_snr_over_snr_plus_one_not_one_over_sqrt_snr_plus_one(t):
    """The v-space weight that keeps the paper's objective (1/sqrt(SNR) on the epsilon error), from a v
    model's own errors: v = alpha eps - sigma x0 and x0 = alpha x_t - sigma v (Salimans & Ho 2022)."""
    from guided_diffusion.targets import to_x0_and_eps

    g = th.Generator().manual_seed(t)
    x0, eps = th.rand(2, 3, 8, 8, generator=g, dtype=th.float64), th.randn(2, 3, 8, 8, generator=g, dtype=th.float64)
    alpha, sigma = math.sqrt(LINEAR_AC[t]), math.sqrt(1 - LINEAR_AC[t])
    x_t = alpha * x0 + sigma * eps
    v_hat = alpha * eps - sigma * x0 + 0.2 * th.randn(x0.shape, generator=g, dtype=th.float64)
    x0_hat, eps_hat = to_x0_and_eps("v", v_hat, x_t, alpha, sigma)
    v_error = th.mean((v_hat - (alpha * eps - sigma * x0)) ** 2)
    paper = th.mean((eps_hat - eps) ** 2) / math.sqrt(SNR[t])
    w_v = LossWeighting.from_flags("debias", "eps").weights(LINEAR_AC, "v")[t]
    assert w_v == pytest.approx(math.sqrt(SNR[t]) / (SNR[t] + 1), rel=1e-12)
    assert float(w_v * v_error) == pytest.approx(float(paper), rel=1e-9)
    # 1/sqrt(SNR + 1) = sigma is a v model's x0 amplification (x0 - x0_hat = sigma (v_hat - v)), another objective.
    assert float(th.mean((x0_hat - x0) ** 2)) == pytest.approx(float(sigma**2 * v_error), rel=1e-9)
    ratio = (1 / math.sqrt(SNR[t] + 1)) / w_v
    assert ratio == pytest.approx(math.sqrt(SNR[t] + 1) / math.sqrt(SNR[t]), rel=1e-12)
