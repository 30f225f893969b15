"""Noise-schedule curves: SNR(t) with the amplification 1/sqrt(SNR(t)) (Fig. 2 left) and loss weights (Fig. 5 left).

The loss weights are every registry entry under uniform t and the field's recipes that pair a weighting
with its paper's noise-level density, each as the effective weight on ADM's epsilon error over log SNR
(T p(t) w(t) for a density in the objective; docs/weightings.md).
"""

import numpy as np

from guided_diffusion.noise_levels import effective_eps_weights
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.weighting import WEIGHT_SCHEDULES, snr_from_alphas_cumprod, timestep_loss_weights

# weighting+density as the papers train (EDM, EDM2 at u = 0, SD3's and Hang et al.'s densities with ADM's
# constant weighting), in the plan's run grammar.
FIELD_RECIPES = ("edm+edm-lognormal", "edm2+edm2-lognormal", "constant+logit-normal", "constant+laplace")
from .outputs import output_prefix, save_figure, write_csv
from .plotting import new_figure

NORMALIZATIONS = {
    "mean": ("weight / its mean over t", lambda w: w / w.mean()),
    "max": ("weight / its maximum over t", lambda w: w / w.max()),
    "none": ("weight", lambda w: w),
}


def alphas_cumprod(noise_schedule, diffusion_steps):
    return create_gaussian_diffusion(steps=diffusion_steps, noise_schedule=noise_schedule).alphas_cumprod


def snr_curves(schedules=("linear", "cosine"), diffusion_steps=1000):
    """{schedule: {"snr": SNR(t), "amplification": 1/sqrt(SNR(t))}} over t = 0..T-1."""
    curves = {}
    for schedule in schedules:
        snr = snr_from_alphas_cumprod(alphas_cumprod(schedule, diffusion_steps))
        curves[schedule] = {"snr": snr, "amplification": 1.0 / np.sqrt(snr)}
    return curves


def write_snr_curves(curves, prefix):
    rows = [
        (t, schedule, float(c["snr"][t]), float(c["amplification"][t]))
        for schedule, c in curves.items()
        for t in range(len(c["snr"]))
    ]
    csv_path = write_csv(prefix + ".csv", ("t", "schedule", "snr", "amplification"), rows)

    figure = new_figure(5.5, 3.8)
    axes = figure.subplots()
    for index, (schedule, c) in enumerate(curves.items()):
        color = f"C{index}"
        t = np.arange(len(c["snr"]))
        axes.plot(t, c["snr"], color=color, label=f"SNR(t), {schedule}")
        axes.plot(t, c["amplification"], color=color, linestyle="--", label=f"1/sqrt(SNR(t)), {schedule}")
    axes.set_yscale("log")
    axes.set_xlabel("timestep t")
    axes.set_title("SNR and amplification coefficient", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def weight_curves(noise_schedule="linear", diffusion_steps=1000, normalize="mean", **schedule_parameters):
    """{name: {"weight", "normalized"}} for every entry of `weighting.WEIGHT_SCHEDULES` and FIELD_RECIPES, plus the SNR.

    `schedule_parameters` (each schedule's declared parameters) go to the schedules
    that take them. Weights are the effective weights on an epsilon model's error under uniform t.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize {normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    ac = alphas_cumprod(noise_schedule, diffusion_steps)
    scale = NORMALIZATIONS[normalize][1]
    curves = {}
    for name in WEIGHT_SCHEDULES:
        weight = timestep_loss_weights(name, ac, target="eps", weight_space="target", **schedule_parameters)
        curves[name] = {"weight": weight, "normalized": scale(weight)}
    for recipe in FIELD_RECIPES:
        name, _, density = recipe.partition("+")
        weight = effective_eps_weights(curves[name]["weight"], density, ac)
        curves[recipe] = {"weight": weight, "normalized": scale(weight)}
    return {"snr": snr_from_alphas_cumprod(ac), "normalize": normalize, "curves": curves}


def write_weight_curves(result, prefix, noise_schedule="linear"):
    snr = result["snr"]
    rows = [
        (t, name, float(snr[t]), float(c["weight"][t]), float(c["normalized"][t]))
        for name, c in result["curves"].items()
        for t in range(len(snr))
    ]
    csv_path = write_csv(prefix + ".csv", ("t", "schedule", "snr", "weight", "normalized_weight"), rows)

    figure = new_figure(7.5, 4.5)
    axes = figure.subplots()
    log_snr = np.log(snr)
    for index, (name, c) in enumerate(result["curves"].items()):
        style = "--" if "+" in name else "-"
        axes.plot(log_snr, c["normalized"], style, color=f"C{index % 10}", label=name)
    axes.set_yscale("log")
    axes.set_ylim(1e-4, None)
    axes.invert_xaxis()  # noisier to the right, as t grows
    axes.set_xlabel("log SNR (t = 0 on the left, T-1 on the right)")
    axes.set_ylabel(NORMALIZATIONS[result["normalize"]][0])
    axes.set_title(f"Loss weights ({noise_schedule} schedule, T={len(snr)})", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="lower right")
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run_snr_curves(out=None, schedules=("linear", "cosine"), diffusion_steps=1000):
    return write_snr_curves(snr_curves(schedules, diffusion_steps), output_prefix(out, "snr_curves"))


def run_weight_curves(out=None, noise_schedule="linear", diffusion_steps=1000, normalize="mean", **schedule_parameters):
    result = weight_curves(noise_schedule, diffusion_steps, normalize, **schedule_parameters)
    return write_weight_curves(result, output_prefix(out, "weight_curves"), noise_schedule)
