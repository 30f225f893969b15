"""The diffusion process against closed forms: schedules, posteriors, parameterisations, losses, samplers."""

import numpy as np
import pytest
import torch as th

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.script_util import create_gaussian_diffusion


class AffineModel(th.nn.Module):
    """A tiny deterministic 'network': output = a * x + b(t), with optional variance channels."""

    def __init__(self, channels=3, learn_sigma=False):
        super().__init__()
        self.scale = th.nn.Parameter(th.tensor(0.3))
        self.learn_sigma = learn_sigma
        self.channels = channels
        self.seen_timesteps = []

    def forward(self, x, t, y=None):
        self.seen_timesteps.append(t.detach().cpu().clone())
        shift = (t.float() / 1000.0).view(-1, *([1] * (x.ndim - 1)))
        out = self.scale * x + shift
        if self.learn_sigma:
            out = th.cat([out, th.tanh(x + shift)], dim=1)
        return out


def make(**kw):
    # ADM's linear schedule is meant for T >= 100 (beta reaches 1 at T = 50), so short processes use cosine.
    base = dict(steps=1000, noise_schedule="linear" if kw.get("steps", 1000) >= 100 else "cosine")
    base.update(kw)
    return create_gaussian_diffusion(**base)


# ---- schedules --------------------------------------------------------------


def test_linear_schedule_matches_ho_and_scales_with_steps():
    betas = gd.get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    half = gd.get_named_beta_schedule("linear", 500)
    assert half[0] == pytest.approx(2e-4) and half[-1] == pytest.approx(0.04)


def test_cosine_schedule_is_clipped_and_follows_alpha_bar():
    betas = gd.get_named_beta_schedule("cosine", 1000)
    assert betas.max() == pytest.approx(0.999)
    assert betas[-1] == pytest.approx(0.999)
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    ac = np.cumprod(1 - betas)
    # Before the clipped tail, a_t equals f(t+1)/f(0) exactly.
    for t in (0, 10, 500, 900):
        assert ac[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_monotone_and_posterior_formulas(schedule):
    d = make(noise_schedule=schedule)
    ac = d.alphas_cumprod
    assert np.all(np.diff(ac) < 0) and 0 < ac[-1] < ac[0] < 1
    np.testing.assert_allclose(d.sqrt_alphas_cumprod**2 + d.sqrt_one_minus_alphas_cumprod**2, 1.0)
    prev = np.append(1.0, ac[:-1])
    np.testing.assert_allclose(d.posterior_variance, d.betas * (1 - prev) / (1 - ac))
    # Appendix A: mu~ = C1 x0 + C2 x_t.
    c1 = np.sqrt(prev) * d.betas / (1 - ac)
    c2 = np.sqrt(1 - d.betas) * (1 - prev) / (1 - ac)
    np.testing.assert_allclose(d.posterior_mean_coef1, c1)
    np.testing.assert_allclose(d.posterior_mean_coef2, c2)
    assert d.posterior_variance[0] == 0.0
    assert np.isfinite(d.posterior_log_variance_clipped).all()


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="noise_schedule 'quadratic'"):
        gd.get_named_beta_schedule("quadratic", 10)


def test_q_sample_moments():
    d = make()
    th.manual_seed(0)
    x0 = th.full((20000, 1), 0.5)
    t = th.full((20000,), 300, dtype=th.long)
    xt = d.q_sample(x0, t)
    a = d.alphas_cumprod[300]
    assert xt.mean().item() == pytest.approx(np.sqrt(a) * 0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.03)


def test_posterior_is_the_exact_bayes_posterior():
    # q(x_{t-1}|x_t,x_0) has mean/variance from Gaussian conditioning of the joint (x_{t-1}, x_t).
    d = make(steps=50)
    t = 20
    a_prev, a_t, beta = d.alphas_cumprod[t - 1], d.alphas_cumprod[t], d.betas[t]
    x0, xt = th.tensor([[0.7]]), th.tensor([[-0.2]])
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, th.tensor([t]))
    # Joint: x_{t-1} = sqrt(a_prev) x0 + s1 e1; x_t = sqrt(1-beta) x_{t-1} + sqrt(beta) e2.
    var_prev = 1 - a_prev
    cov = np.sqrt(1 - beta) * var_prev
    var_t = 1 - a_t
    expected_mean = np.sqrt(a_prev) * 0.7 + cov / var_t * (-0.2 - np.sqrt(a_t) * 0.7)
    expected_var = var_prev - cov**2 / var_t
    assert mean.item() == pytest.approx(expected_mean, rel=1e-5)
    assert var.item() == pytest.approx(expected_var, rel=1e-5)


# ---- parameterisations ------------------------------------------------------


def test_eps_x0_v_conversions_round_trip():
    d = make()
    g = th.Generator().manual_seed(0)
    x0 = th.randn(6, 3, 4, 4, generator=g)
    eps = th.randn(6, 3, 4, 4, generator=g)
    t = th.tensor([0, 1, 100, 500, 900, 999])
    xt = d.q_sample(x0, t, noise=eps)
    th.testing.assert_close(d._predict_xstart_from_eps(xt, t, eps), x0, atol=2e-3, rtol=1e-4)
    th.testing.assert_close(d._predict_eps_from_xstart(xt, t[:], x0)[2:], eps[2:], atol=1e-3, rtol=1e-3)
    v = d._predict_v(x0, t, eps)
    th.testing.assert_close(d._predict_xstart_from_v(xt, t, v), x0, atol=1e-5, rtol=1e-5)
    a = th.from_numpy(d.alphas_cumprod)[t].float().view(-1, 1, 1, 1)
    th.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)


def test_eq6_x0_error_is_eps_error_over_sqrt_snr():
    d = make()
    g = th.Generator().manual_seed(1)
    x0, eps, err = (th.randn(4, 3, 2, 2, generator=g) for _ in range(3))
    t = th.tensor([50, 300, 700, 999])
    xt = d.q_sample(x0, t, noise=eps)
    x0_hat = d._predict_xstart_from_eps(xt, t, eps - err)
    snr = d.alphas_cumprod[t.numpy()] / (1 - d.alphas_cumprod[t.numpy()])
    expected = x0 + th.from_numpy(1 / np.sqrt(snr)).float().view(-1, 1, 1, 1) * err
    th.testing.assert_close(x0_hat, expected, atol=1e-4, rtol=1e-4)


def test_predict_v_training_target_is_v():
    d = make(predict_v=True)
    assert d.model_mean_type == gd.ModelMeanType.VELOCITY
    zero = lambda x, t, **kw: th.zeros_like(x)
    g = th.Generator().manual_seed(2)
    x0, noise = th.randn(3, 3, 4, 4, generator=g), th.randn(3, 3, 4, 4, generator=g)
    t = th.tensor([10, 500, 990])
    losses = d.training_losses(zero, x0, t, noise=noise)
    a = th.from_numpy(d.alphas_cumprod[t.numpy()]).float().view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    th.testing.assert_close(losses["mse"], (v**2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("schedule", ["constant", "p2", "min_snr", "snr", "debias"])
def test_weight_space_eps_makes_parameterisations_agree(schedule):
    """The same eps error costs the same under eps, x0 and v models when weights live in eps space."""
    g = th.Generator().manual_seed(3)
    x0 = th.randn(5, 3, 4, 4, generator=g)
    noise = th.randn(5, 3, 4, 4, generator=g)
    eps_hat = noise + 0.1 * th.randn(5, 3, 4, 4, generator=g)
    t = th.tensor([0, 50, 400, 800, 999])
    losses = {}
    for target, flags in (("eps", {}), ("x0", {"predict_xstart": True}), ("v", {"predict_v": True})):
        d = make(weight_schedule=schedule, weight_space="eps", **flags)
        xt = d.q_sample(x0, t, noise=noise)
        x0_hat = d._predict_xstart_from_eps(xt, t, eps_hat)
        output = {"eps": eps_hat, "x0": x0_hat, "v": d._predict_v(x0_hat, t, eps_hat)}[target]
        model = lambda x, ts, out=output, **kw: out
        losses[target] = d.training_losses(model, x0, t, noise=noise)["loss"]
    th.testing.assert_close(losses["x0"], losses["eps"], rtol=2e-3, atol=1e-6)
    th.testing.assert_close(losses["v"], losses["eps"], rtol=2e-3, atol=1e-6)


def test_weight_space_target_multiplies_the_targets_own_error():
    d = make(predict_xstart=True, weight_schedule="debias")
    x0 = th.zeros(2, 3, 2, 2)
    model = lambda x, t, **kw: th.ones_like(x)
    t = th.tensor([0, 999])
    losses = d.training_losses(model, x0, t, noise=th.zeros_like(x0))
    th.testing.assert_close(losses["mse"], th.ones(2))
    th.testing.assert_close(losses["loss"], th.from_numpy(d.mse_weights[[0, 999]]).float())


# ---- losses -----------------------------------------------------------------


def test_normal_kl_closed_form_and_zero_on_equal():
    m1, lv1, m2, lv2 = th.tensor(0.3), th.tensor(-1.0), th.tensor(-0.5), th.tensor(0.4)
    s1, s2 = np.exp(-0.5), np.exp(0.2)
    expected = np.log(s2 / s1) + (s1**2 + (0.3 + 0.5) ** 2) / (2 * s2**2) - 0.5
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(expected, rel=1e-5)
    assert normal_kl(m1, lv1, m1, lv1).item() == pytest.approx(0.0, abs=1e-7)


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    bins = th.linspace(-1, 1, 256)
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.0), (0.0, 0.5)):
        lp = discretized_gaussian_log_likelihood(
            bins, means=th.full_like(bins, mean), log_scales=th.full_like(bins, log_scale)
        )
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_learned_sigma_loss_is_weighted_mse_plus_unweighted_vb():
    d = make(learn_sigma=True, weight_schedule="debias")
    model = AffineModel(learn_sigma=True)
    g = th.Generator().manual_seed(4)
    x0, noise = th.randn(4, 3, 4, 4, generator=g), th.randn(4, 3, 4, 4, generator=g)
    t = th.tensor([0, 10, 500, 999])
    losses = d.training_losses(model, x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"}
    w = th.from_numpy(d.mse_weights[t.numpy()]).float()
    th.testing.assert_close(losses["loss"], w * losses["mse"] + losses["vb"])


def test_vb_term_never_moves_the_mean():
    d = make(learn_sigma=True)
    x0 = th.randn(3, 3, 4, 4, generator=th.Generator().manual_seed(5))
    t = th.tensor([1, 300, 900])
    mean_out = th.randn(3, 3, 4, 4, requires_grad=True)
    var_out = th.zeros(3, 3, 4, 4, requires_grad=True)
    model = lambda x, ts, **kw: th.cat([mean_out, var_out], dim=1)
    d.training_losses(model, x0, t)["vb"].sum().backward()
    assert mean_out.grad is None or th.count_nonzero(mean_out.grad) == 0
    assert var_out.grad is not None and th.count_nonzero(var_out.grad) > 0


@pytest.mark.parametrize("use_kl", [True, False])
def test_kl_and_mse_loss_types(use_kl):
    d = make(steps=20, learn_sigma=True, use_kl=use_kl)
    assert d.loss_type == (gd.LossType.RESCALED_KL if use_kl else gd.LossType.MSE)
    losses = d.training_losses(AffineModel(learn_sigma=True), th.zeros(2, 3, 4, 4), th.tensor([0, 19]))
    assert th.isfinite(losses["loss"]).all()
    assert ("mse" in losses) != use_kl


def test_fixed_variances():
    large = make(steps=10)
    small = create_gaussian_diffusion(steps=10, sigma_small=True, noise_schedule="cosine")
    x = th.zeros(1, 3, 2, 2)
    for t in range(1, 10):
        tt = th.tensor([t])
        lo = small.p_mean_variance(AffineModel(), x, tt)["variance"].flatten()[0].item()
        hi = large.p_mean_variance(AffineModel(), x, tt)["variance"].flatten()[0].item()
        assert lo == pytest.approx(small.posterior_variance[t], rel=1e-5)
        assert hi == pytest.approx(large.betas[t], rel=1e-5)
        assert lo < hi


def test_learned_range_interpolates_between_the_fixed_variances():
    d = make(steps=10, learn_sigma=True)
    x = th.zeros(1, 3, 2, 2)
    t = th.tensor([5])
    for v, expected in ((-1.0, d.posterior_variance[5]), (1.0, d.betas[5])):
        model = lambda xx, ts, v=v, **kw: th.cat([xx, th.full_like(xx, v)], dim=1)
        out = d.p_mean_variance(model, x, t)
        assert out["variance"].flatten()[0].item() == pytest.approx(expected, rel=1e-4)


# ---- sampling -----------------------------------------------------------------


def test_ddim_eta0_is_deterministic_and_ignores_the_noise_source():
    d = make(timestep_respacing="ddim10")
    model = AffineModel()
    x_T = th.randn(2, 3, 4, 4, generator=th.Generator().manual_seed(6))
    a = d.ddim_sample_loop(model, x_T.shape, noise=x_T, eta=0.0)
    b = d.ddim_sample_loop(model, x_T.shape, noise=x_T, eta=0.0, noise_source=IndexedNoise(9, [0, 1]))
    th.testing.assert_close(a, b, rtol=0, atol=0)
    c = d.ddim_sample_loop(model, x_T.shape, noise=x_T, eta=1.0, noise_source=IndexedNoise(9, [0, 1]))
    assert not th.allclose(a, c)


def test_p_sample_loop_is_clipped_and_respaced_ddpm_runs_with_two_steps():
    d = make(timestep_respacing="2")
    model = AffineModel()
    out = d.p_sample_loop(model, (3, 3, 4, 4), clip_denoised=True)
    assert out.shape == (3, 3, 4, 4)
    assert out.min() >= -1 and out.max() <= 1
    # The model saw the original indices 999 then 0.
    assert [int(t[0]) for t in model.seen_timesteps] == [999, 0]


def test_progressive_loops_yield_one_output_per_step():
    d = make(timestep_respacing="5")
    outs = list(d.p_sample_loop_progressive(AffineModel(), (1, 3, 2, 2)))
    assert len(outs) == 5 and set(outs[0]) == {"sample", "pred_xstart"}
    outs = list(d.ddim_sample_loop_progressive(AffineModel(), (1, 3, 2, 2)))
    assert len(outs) == 5


def test_indexed_noise_depends_only_on_seed_and_index():
    full = IndexedNoise(3, [0, 1, 2, 3]).randn_like(th.empty(4, 3, 2, 2))
    part = IndexedNoise(3, [2, 3]).randn_like(th.empty(2, 3, 2, 2))
    th.testing.assert_close(full[2:], part, rtol=0, atol=0)
    other = IndexedNoise(4, [2, 3]).randn_like(th.empty(2, 3, 2, 2))
    assert not th.allclose(part, other)
    with pytest.raises(ValueError, match="batch of 3"):
        IndexedNoise(3, [0, 1]).randn_like(th.empty(3, 1))


def test_samples_do_not_depend_on_batch_composition():
    d = make(timestep_respacing="4")
    model = AffineModel()
    together = d.p_sample_loop(model, (4, 3, 2, 2), noise_source=IndexedNoise(0, range(4)), device="cpu")
    alone = d.p_sample_loop(model, (2, 3, 2, 2), noise_source=IndexedNoise(0, [2, 3]), device="cpu")
    th.testing.assert_close(together[2:], alone)


def test_calc_bpd_loop_shapes_and_total():
    d = make(steps=8, learn_sigma=True)
    out = d.calc_bpd_loop(AffineModel(learn_sigma=True), th.zeros(2, 3, 4, 4))
    assert out["vb"].shape == (2, 8) and out["mse"].shape == (2, 8) and out["xstart_mse"].shape == (2, 8)
    th.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert (out["prior_bpd"] >= 0).all()


def test_bad_shapes_are_refused_with_a_message():
    d = make(steps=10, learn_sigma=True)
    with pytest.raises(ValueError, match="must output 6 channels"):
        d.training_losses(AffineModel(), th.zeros(1, 3, 2, 2), th.tensor([3]))


def test_one_step_process_samples():
    d = make(timestep_respacing="1")
    assert d.num_timesteps == 1 and np.isfinite(d.posterior_log_variance_clipped).all()
    out = d.p_sample_loop(AffineModel(), (2, 3, 2, 2))
    assert out.shape == (2, 3, 2, 2) and out.abs().max() <= 1
