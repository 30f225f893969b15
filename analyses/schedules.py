"""Noise-schedule curves: SNR(t) with the amplification 1/sqrt(SNR(t)) (Fig. 2 left) and loss weights (Fig. 5 left)."""

import numpy as np

from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.weighting import WEIGHT_SCHEDULES, snr_from_alphas_cumprod, timestep_loss_weights
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
    """{name: {"weight", "normalized"}} for every entry of `weighting.WEIGHT_SCHEDULES`, plus the SNR.

    `schedule_parameters` (each schedule's declared parameters) go to the schedules
    that take them. Weights are the target-space weights of an epsilon model.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize {normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    ac = alphas_cumprod(noise_schedule, diffusion_steps)
    scale = NORMALIZATIONS[normalize][1]
    curves = {}
    for name in WEIGHT_SCHEDULES:
        weight = timestep_loss_weights(name, ac, target="eps", weight_space="target", **schedule_parameters)
        curves[name] = {"weight": weight, "normalized": scale(weight)}
    return {"snr": snr_from_alphas_cumprod(ac), "normalize": normalize, "curves": curves}


def write_weight_curves(result, prefix, noise_schedule="linear"):
    snr = result["snr"]
    rows = [
        (t, name, float(snr[t]), float(c["weight"][t]), float(c["normalized"][t]))
        for name, c in result["curves"].items()
        for t in range(len(snr))
    ]
    csv_path = write_csv(prefix + ".csv", ("t", "schedule", "snr", "weight", "normalized_weight"), rows)

    figure = new_figure(5.5, 3.8)
    axes = figure.subplots()
    t = np.arange(len(snr))
    for name, c in result["curves"].items():
        axes.plot(t, c["normalized"], label=name)
    axes.set_yscale("log")
    axes.set_xlabel("timestep t")
    axes.set_ylabel(NORMALIZATIONS[result["normalize"]][0])
    axes.set_title(f"Loss weights ({noise_schedule} schedule, T={len(snr)})", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run_snr_curves(out=None, schedules=("linear", "cosine"), diffusion_steps=1000):
    return write_snr_curves(snr_curves(schedules, diffusion_steps), output_prefix(out, "snr_curves"))


def run_weight_curves(out=None, noise_schedule="linear", diffusion_steps=1000, normalize="mean", **schedule_parameters):
    result = weight_curves(noise_schedule, diffusion_steps, normalize, **schedule_parameters)
    return write_weight_curves(result, output_prefix(out, "weight_curves"), noise_schedule)
