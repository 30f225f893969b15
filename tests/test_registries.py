"""A newcomer's weighting (one registry entry) and sampler (one registration) work everywhere, with no other edit:
the training and sampling command lines, a plan, and the figures."""

import csv
import json

import numpy as np
import pytest
import torch

from analyses.outputs import read_csv
from guided_diffusion import samplers, weighting
from guided_diffusion.gaussian_diffusion import get_named_beta_schedule
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.image_ops import to_uint8_nhwc
from guided_diffusion.script_util import create_model_and_diffusion
from pipeline import expand, load_plan
from scripts import image_sample, image_train
from scripts.analysis import few_step_grid, weight_curves
from tests.tiny import TINY_8X8, flag_list, save_random_checkpoint, tiny_flags


def power_snr(snr, power_snr_exponent=0.5):
    """A throwaway parameterised weighting: SNR^-p."""
    return snr ** -power_snr_exponent


def noisy_ddim(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
    """A throwaway sampler with an option of its own: DDIM at eta = --ddim_noise."""
    return diffusion.ddim_sample_loop(
        model, shape, clip_denoised=flags["clip_denoised"], model_kwargs=model_kwargs, device=device,
        eta=flags["ddim_noise"], noise_source=noise_source,
    )


@pytest.fixture
def power_snr_registered(monkeypatch):
    monkeypatch.setitem(weighting.WEIGHT_SCHEDULES, "power_snr", power_snr)


@pytest.fixture
def noisy_ddim_registered(monkeypatch):
    monkeypatch.setattr(samplers, "SAMPLERS", dict(samplers.SAMPLERS))
    monkeypatch.setattr(samplers, "SAMPLER_OPTION_DEFAULTS", dict(samplers.SAMPLER_OPTION_DEFAULTS))
    samplers.register_sampler(
        "noisy_ddim", noisy_ddim, options=("clip_denoised", "ddim_noise"), option_defaults={"ddim_noise": 0.0},
        respacing_prefix="ddim",
    )


PLAN = """
[plan]
name = "newcomer"
[train]
max_steps = 2
power_snr_exponent = 0.25
[sample]
num_samples = 4
samplers = [{{ sampler = "noisy_ddim", steps = [3] }}]
[[datasets]]
name = "embedded"
config = "{config}"
runs = ["power_snr", "debias"]
"""


def test_a_new_weighting_trains_from_the_command_line_a_plan_and_a_figure(
    power_snr_registered, class_image_folder, tmp_path
):
    # The training command line has its flag, and the run trains and records it.
    argv = flag_list(TINY_8X8) + ["--weight_schedule", "power_snr", "--power_snr_exponent", "0.25"]
    argv += ["--data_dir", class_image_folder, "--log_dir", tmp_path / "run", "--batch_size", 2, "--max_steps", 1,
             "--num_workers", 0]
    assert image_train.main([str(a) for a in argv]) == 0
    manifest = json.loads((tmp_path / "run" / "checkpoint000001.json").read_text())
    assert (manifest["flags"]["weight_schedule"], manifest["flags"]["power_snr_exponent"]) == ("power_snr", 0.25)
    recorded = {key: manifest["flags"][key] for key in tiny_flags()}
    _, diffusion = create_model_and_diffusion(**recorded)
    a = np.cumprod(1.0 - get_named_beta_schedule("linear", TINY_8X8["diffusion_steps"]))
    np.testing.assert_allclose(diffusion.mse_weights, (a / (1 - a)) ** -0.25, rtol=1e-12)

    # A plan names it as a run and passes its parameter through [train].
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_8X8.items()
                                            if k not in ("diffusion_steps", "noise_schedule", "learn_sigma")))
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(PLAN.format(config=config).replace('sampler = "noisy_ddim"', 'sampler = "ddim"'))
    train = {s.name: s for s in expand(load_plan(str(plan_path), root=str(tmp_path / "w")))}["train/embedded/power_snr"]
    flags = image_train.parse_flags(train.argv[2:])
    assert (flags["weight_schedule"], flags["power_snr_exponent"]) == ("power_snr", 0.25)

    # The weight-curve figure draws it, with its parameter as a flag.
    assert weight_curves.main(["--power_snr_exponent", "0.25", "--out", str(tmp_path / "w5")]) == 0
    rows = [r for r in read_csv(str(tmp_path / "w5.csv")) if r["schedule"] == "power_snr"]
    assert len(rows) == 1000
    snr = np.array([float(r["snr"]) for r in rows])
    np.testing.assert_allclose([float(r["weight"]) for r in rows], snr**-0.25, rtol=1e-9)


def test_a_new_sampler_samples_from_the_command_line_a_plan_and_a_figure(noisy_ddim_registered, tmp_path):
    flags = tiny_flags(**TINY_8X8)
    model = save_random_checkpoint(tmp_path / "model.pt", flags, seed=3, perturbation=0.05)

    # The sampling command line takes the sampler and its own flag; sample i is the registered run's.
    argv = flag_list(TINY_8X8) + ["--model_path", tmp_path / "model.pt", "--out_dir", tmp_path / "s", "--num_samples", 3,
                                  "--sampler", "noisy_ddim", "--ddim_noise", 0.5, "--timestep_respacing", "ddim4"]
    assert image_sample.main([str(a) for a in argv]) == 0
    with np.load(tmp_path / "s" / "samples_3x8x8x3.npz") as data:
        images = data["arr_0"]
    _, diffusion = create_model_and_diffusion(**{**flags, "timestep_respacing": "ddim4"})
    with torch.no_grad():
        expected = diffusion.ddim_sample_loop(model, (3, 3, 8, 8), eta=0.5, noise_source=IndexedNoise(0, range(3)))
    assert np.abs(images.astype(int) - to_uint8_nhwc(expected).astype(int)).max() <= 1
    summary = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert (summary["run"]["sampler"], summary["run"]["steps"], summary["image_flags"]["ddim_noise"]) == ("noisy_ddim", 4, 0.5)

    # A plan asks it for T steps the way it declares (ADM's exact DDIM stride here).
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nimage_size = 8\nnum_channels = 32\nchannel_mult = \"1,2\"\nattention_resolutions = \"4\"\n")
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(PLAN.format(config=config).replace("power_snr_exponent = 0.25\n", "").replace('"power_snr", ', ""))
    stages = {s.name: s for s in expand(load_plan(str(plan_path), root=str(tmp_path / "w")))}
    sample_flags = image_sample.parse_flags(stages["sample/embedded/debias/000002/noisy_ddim3"].argv[2:])
    assert (sample_flags["sampler"], sample_flags["timestep_respacing"]) == ("noisy_ddim", "ddim3")

    # The few-step figure draws it.
    argv = flag_list(TINY_8X8) + ["--checkpoints", f"m={tmp_path / 'model.pt'}", "--sampler", "noisy_ddim",
                                  "--steps", "2,4", "--num_samples", 2, "--out", tmp_path / "fig1", "--device", "cpu"]
    assert few_step_grid.main([str(a) for a in argv]) == 0
    with open(tmp_path / "fig1.csv") as f:
        assert {(r["checkpoint"], r["steps"]) for r in csv.DictReader(f)} == {("m", "2"), ("m", "4")}


def test_every_sampler_reads_timestep_respacing_with_adms_grammar():
    """One grammar (respace.space_timesteps) for every sampler; the fast ones take as many steps as ADM's would."""
    from guided_diffusion import sampling, samplers
    from guided_diffusion.respace import space_timesteps

    base = {**sampling.flag_defaults(), "model_path": "m.pt", "out_dir": "out", "diffusion_steps": 1000}
    for respacing in ("10", "ddim10", "4,6", "250"):
        expected = len(space_timesteps(1000, respacing))
        for name in ("ddpm", "dpm_solver", "unipc", "paper_dpm_solver"):
            flags = dict(base, sampler=name, timestep_respacing=respacing)
            method = samplers.resolve_method(flags)
            assert method.steps == expected == sampling.sampling_steps(flags)
            assert method.process_respacing == (respacing if name == "ddpm" else "")
    # Without a respacing a fast sampler takes its default step count; there is no second flag for it.
    assert samplers.resolve_method(dict(base, sampler="unipc")).steps == samplers.FAST_DEFAULT_STEPS == 20
    assert "sampling_steps" not in sampling.flag_defaults()
