"""Loss weightings against their closed forms, and ADM's timestep respacing."""

import numpy as np
import pytest
import torch as th

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.resample import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion import weighting
from guided_diffusion.weighting import WEIGHT_SCHEDULES, snr_from_alphas_cumprod, timestep_loss_weights

LINEAR_AC = np.cumprod(1 - gd.get_named_beta_schedule("linear", 1000))


@pytest.mark.parametrize("t", [0, 1, 99, 500, 900, 999])
def test_each_weighting_equals_its_closed_form(t):
    snr = LINEAR_AC[t] / (1 - LINEAR_AC[t])
    expected = {
        "constant": 1.0,
        "p2": 1.0 / (1.0 + snr) ** 1.0,
        "min_snr": min(snr, 5.0) / snr,
        "snr": 1.0 / snr,
        "debias": 1.0 / np.sqrt(snr),
        # The field's (tests/test_field_weightings.py checks each against its source's own variable).
        "edm": 1.0 + 4.0 / snr,
        "edm2": 1.0 + 4.0 / snr,
        "sigmoid": 1000 * abs(np.log(LINEAR_AC[max(t, 1) - 1] / (1 - LINEAR_AC[max(t, 1) - 1])) - np.log(
            LINEAR_AC[max(t, 1)] / (1 - LINEAR_AC[max(t, 1)]))) / (1 + snr * np.exp(2.0)),
        "soft_min_snr": 4.0 / (4.0 + snr),
    }
    assert set(expected) == set(WEIGHT_SCHEDULES)
    for name, value in expected.items():
        assert timestep_loss_weights(name, LINEAR_AC)[t] == pytest.approx(value, rel=1e-12)


def test_debias_endpoints_of_the_linear_schedule():
    w = timestep_loss_weights("debias", LINEAR_AC)
    assert w[999] == pytest.approx(157.4, abs=0.05)
    assert w[0] == pytest.approx(0.0100, abs=5e-6)
    assert np.all(np.diff(w) > 0)


def test_schedule_parameters_are_used():
    snr = snr_from_alphas_cumprod(LINEAR_AC)
    w = timestep_loss_weights("p2", LINEAR_AC, p2_k=2.0, p2_gamma=0.5, min_snr_gamma=1.0)
    np.testing.assert_allclose(w, 1 / np.sqrt(2 + snr))
    w = timestep_loss_weights("min_snr", LINEAR_AC, min_snr_gamma=1.0, p2_k=9.0)
    np.testing.assert_allclose(w, np.minimum(snr, 1.0) / snr)


def test_min_snr_and_p2_are_at_most_one_and_debias_grows_past_one():
    assert timestep_loss_weights("min_snr", LINEAR_AC).max() == pytest.approx(1.0)
    assert timestep_loss_weights("p2", LINEAR_AC).max() < 1.0
    assert timestep_loss_weights("debias", LINEAR_AC).max() > 100


def test_unknown_schedule_lists_the_valid_names():
    with pytest.raises(ValueError) as e:
        create_gaussian_diffusion(weight_schedule="lsnr")
    message = str(e.value)
    assert "'lsnr'" in message
    for name in WEIGHT_SCHEDULES:
        assert name in message


def test_zero_snr_is_refused_not_nan():
    betas = np.append(np.full(9, 0.1), 1.0)  # a_T = 0, so SNR(T) = 0
    with pytest.raises(ValueError, match="not finite at timestep 9"):
        gd.GaussianDiffusion(
            betas=betas,
            model_mean_type=gd.ModelMeanType.EPSILON,
            model_var_type=gd.ModelVarType.FIXED_SMALL,
            loss_type=gd.LossType.MSE,
            loss_weighting={"name": "debias"},
        )


# ---- respacing ---------------------------------------------------------------


def test_section_counts():
    steps = sorted(space_timesteps(300, "10,15,20"))
    assert len(steps) == 45
    assert sum(s < 100 for s in steps) == 10
    assert sum(100 <= s < 200 for s in steps) == 15
    assert sum(s >= 200 for s in steps) == 20
    assert steps[0] == 0 and steps[9] == 99 and steps[-1] == 299
    assert sorted(space_timesteps(1000, "250"))[:3] == [0, 4, 8]
    assert len(space_timesteps(1000, "250")) == 250
    assert space_timesteps(1000, [1000]) == set(range(1000))


def test_ddim_spacing_is_exact():
    assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))
    assert len(space_timesteps(1000, "ddim7")) == 7


@pytest.mark.parametrize(
    "spec, why",
    [("ddim999", "no integer stride"), ("ddimx", "ddimN"), ("abc", "expected"), ("0", "at least one"), ("2000", "cannot take 2000")],
)
def test_bad_respacing_strings_say_why(spec, why):
    with pytest.raises(ValueError, match=why):
        space_timesteps(1000, spec)


def test_spaced_process_with_all_steps_equals_the_unspaced_one():
    kwargs = dict(
        betas=gd.get_named_beta_schedule("cosine", 100),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE,
        loss_type=gd.LossType.MSE,
    )
    base = gd.GaussianDiffusion(**kwargs)
    spaced = SpacedDiffusion(use_timesteps=range(100), **kwargs)
    np.testing.assert_allclose(spaced.betas, base.betas, rtol=1e-10)
    np.testing.assert_allclose(spaced.posterior_variance, base.posterior_variance, rtol=1e-9, atol=1e-15)
    model = lambda x, t, **kw: th.cat([th.sin(x + t.view(-1, 1, 1, 1) / 50), th.cos(x)], dim=1)
    x = th.randn(2, 3, 4, 4, generator=th.Generator().manual_seed(0))
    t = th.tensor([3, 77])
    a, b = base.p_mean_variance(model, x, t), spaced.p_mean_variance(model, x, t)
    for key in a:
        th.testing.assert_close(a[key], b[key])


def test_spaced_process_keeps_alphas_cumprod_at_kept_steps():
    d = create_gaussian_diffusion(timestep_respacing="10,15,20", steps=300)
    base = create_gaussian_diffusion(steps=300)
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[d.timestep_map], rtol=1e-10)
    np.testing.assert_allclose(d.mse_weights, base.mse_weights[d.timestep_map], rtol=1e-9)


def test_training_through_a_spaced_process_uses_original_indices():
    d = create_gaussian_diffusion(timestep_respacing="ddim4", steps=100)
    seen = []
    model = lambda x, t, **kw: (seen.append(t.clone()), th.zeros_like(x))[1]
    d.training_losses(model, th.zeros(4, 3, 2, 2), th.tensor([0, 1, 2, 3]))
    assert seen[0].tolist() == [0, 25, 50, 75]


# ---- timestep samplers --------------------------------------------------------


def test_uniform_sampler_weights_are_one():
    d = create_gaussian_diffusion(steps=10, noise_schedule="cosine")
    t, w = create_named_schedule_sampler("uniform", d).sample(64, "cpu")
    assert t.min() >= 0 and t.max() < 10
    th.testing.assert_close(w, th.ones(64))


def test_loss_second_moment_sampler_and_state_round_trip():
    d = create_gaussian_diffusion(steps=4, noise_schedule="cosine")
    sampler = LossSecondMomentResampler(d, history_per_term=2, uniform_prob=0.0)
    np.testing.assert_allclose(sampler.weights(), np.ones(4))
    sampler.update_with_local_losses(th.tensor([0, 0, 1, 1, 2, 2, 3, 3]), th.tensor([1.0, 1, 2, 2, 3, 3, 4, 4]))
    np.testing.assert_allclose(sampler.weights(), np.array([1, 2, 3, 4]) / 10)
    restored = LossSecondMomentResampler(d, history_per_term=2, uniform_prob=0.0)
    restored.load_state_dict(sampler.state_dict())
    np.testing.assert_allclose(restored.weights(), sampler.weights())
    np.random.seed(0)
    t, w = sampler.sample(4000, "cpu")
    counts = np.bincount(t.numpy(), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    # Importance weights 1/(T p(t)) keep the expected loss unbiased.
    th.testing.assert_close(w[t == 3][0], th.tensor(1 / (4 * 0.4)))
    assert isinstance(create_named_schedule_sampler("uniform", d), UniformSampler)
    with pytest.raises(ValueError, match="schedule_sampler 'x'"):
        create_named_schedule_sampler("x", d)


def test_every_built_in_parameter_declares_its_range():
    assert {key: weighting.parameter_domain(key) for key in weighting.parameter_defaults()} == {
        "p2_k": weighting.POSITIVE, "p2_gamma": weighting.NON_NEGATIVE, "min_snr_gamma": weighting.POSITIVE,
        "sigma_data": weighting.POSITIVE, "soft_min_snr_gamma": weighting.POSITIVE, "sigmoid_bias": weighting.ANY_FINITE,
    }
    for key, default in weighting.parameter_defaults().items():
        assert default in weighting.parameter_domain(key)


@pytest.mark.parametrize("key, value, valid", [
    ("p2_k", 1e-9, True), ("p2_k", 0.0, False), ("p2_gamma", 0.0, True), ("p2_gamma", -1e-9, False),
    ("min_snr_gamma", 0.0, False), ("min_snr_gamma", float("inf"), False), ("min_snr_gamma", float("nan"), False),
])
def test_parameter_values_are_checked_against_their_range(key, value, valid):
    if valid:
        weighting.check_parameter_values({key: value})
        return
    with pytest.raises(ValueError, match=rf"^--{key} {value:g}: out of range; expected {key} >"):
        weighting.check_parameter_values({key: value})
    # Wherever the weighting is resolved, whichever schedule is chosen.
    with pytest.raises(ValueError, match=f"--{key}"):
        timestep_loss_weights("constant", LINEAR_AC, **{key: value})


def test_a_parameter_declared_without_a_range_takes_any_finite_number(monkeypatch):
    monkeypatch.setitem(WEIGHT_SCHEDULES, "power_snr", lambda snr, power_snr_exponent=0.5: snr ** -power_snr_exponent)
    assert weighting.parameter_domain("power_snr_exponent") == weighting.ANY_FINITE
    w = timestep_loss_weights("power_snr", LINEAR_AC, power_snr_exponent=-2.0)
    np.testing.assert_allclose(w, snr_from_alphas_cumprod(LINEAR_AC) ** 2.0)
    with pytest.raises(ValueError, match=r"--power_snr_exponent nan: out of range; expected power_snr_exponent finite"):
        timestep_loss_weights("power_snr", LINEAR_AC, power_snr_exponent=float("nan"))
