"""The `loss-weight` schedule sampler: t ~ w(t) / sum w, loss times 1/(T p(t)), same objective as uniform sampling."""

import numpy as np
import pytest

from guided_diffusion.resample import LossWeightSampler, check_schedule_sampler, create_named_schedule_sampler
from guided_diffusion.script_util import create_gaussian_diffusion

T = 100
SCHEDULES = ("constant", "p2", "min_snr", "debias")


def diffusion(schedule):
    return create_gaussian_diffusion(steps=T, noise_schedule="linear", weight_schedule=schedule)


def loss_of_t(t):
    # A fixed model's unweighted MSE as a function of t: any positive shape will do.
    return 1.0 + np.sin(0.3 * np.asarray(t)) ** 2 + 0.02 * np.asarray(t)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_expected_weighted_loss_equals_the_uniform_one_exactly(schedule):
    d = diffusion(schedule)
    weighted = d.mse_weights * loss_of_t(np.arange(T))
    uniform = create_named_schedule_sampler("uniform", d).weights()
    sampler = create_named_schedule_sampler("loss-weight", d)
    assert isinstance(sampler, LossWeightSampler)
    expectations = []
    for weights in (uniform, sampler.weights()):
        p = weights / weights.sum()
        expectations.append(np.sum(p * (1.0 / (T * p)) * weighted))
    assert expectations[1] == pytest.approx(expectations[0], rel=1e-12)
    assert expectations[0] == pytest.approx(weighted.mean(), rel=1e-12)
    np.testing.assert_allclose(sampler.weights() / sampler.weights().sum(), d.mse_weights / d.mse_weights.sum())


@pytest.mark.parametrize("schedule", ("p2", "min_snr", "debias"))
def test_monte_carlo_mean_matches_and_variance_drops(schedule):
    d = diffusion(schedule)
    exact = float(np.mean(d.mse_weights * loss_of_t(np.arange(T))))
    estimates = {}
    for name in ("uniform", "loss-weight"):
        np.random.seed(0)
        t, importance = create_named_schedule_sampler(name, d).sample(200_000, "cpu")
        values = importance.double().numpy() * d.mse_weights[t.numpy()] * loss_of_t(t.numpy())
        estimates[name] = (values.mean(), values.std() / np.sqrt(len(values)), values.var())
    for name, (mean, standard_error, _) in estimates.items():
        assert abs(mean - exact) < 4 * standard_error + 1e-12, name
    assert estimates["loss-weight"][2] < estimates["uniform"][2]


def test_sampled_importance_weights_are_one_over_t_p():
    d = diffusion("debias")
    sampler = create_named_schedule_sampler("loss-weight", d)
    np.random.seed(1)
    t, importance = sampler.sample(16, "cpu")
    p = d.mse_weights / d.mse_weights.sum()
    np.testing.assert_allclose(importance.numpy(), 1.0 / (T * p[t.numpy()]), rtol=1e-6)


def test_unknown_or_unusable_sampler_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown --schedule_sampler 'weighted'; expected one of: .*'loss-weight'"):
        check_schedule_sampler("weighted")
    d = diffusion("p2")
    d.mse_weights = d.mse_weights.copy()
    d.mse_weights[3] = 0.0
    with pytest.raises(ValueError, match=r"--schedule_sampler loss-weight needs .* --weight_schedule p2 has w\(3\) = 0"):
        LossWeightSampler(d)


def test_image_train_configs_and_plans_accept_loss_weight(tmp_path):
    from pipeline.plan import PlanError, _check_train_table
    from scripts.image_train import parse_flags

    flags = parse_flags(["--schedule_sampler", "loss-weight", "--weight_schedule", "debias"])
    assert flags["schedule_sampler"] == "loss-weight"
    config = tmp_path / "run.toml"
    config.write_text('[train]\nschedule_sampler = "loss-weight"\n')
    assert parse_flags(["--config", str(config)])["schedule_sampler"] == "loss-weight"
    _check_train_table({"schedule_sampler": "loss-weight"}, "plan.toml")
    with pytest.raises(PlanError, match=r"plan.toml: \[train\] unknown --schedule_sampler 'weighted'"):
        _check_train_table({"schedule_sampler": "weighted"}, "plan.toml")
