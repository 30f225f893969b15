"""What EDM2's learned weighting learned, against the fixed weightings of the same plan.

For each trained run (its checkpoint's manifest gives the flags), the effective weight on the epsilon
error of step t under uniform t: the diffusion's weight w(t) in epsilon space, times T p(t) when a
noise-level density is part of the objective, divided by exp(u(t)) for a run whose checkpoint set
holds a learned weighting (`loss_weighting{step}.pt`, learned_weighting.py). Curves are over log SNR,
each divided by its mean over t so that their shapes compare; u(t) itself is drawn below.
"""

import os

import numpy as np
import torch

from guided_diffusion.learned_weighting import FILE_KEY, LogVariance
from guided_diffusion.noise_levels import effective_eps_weights
from guided_diffusion.run.checkpoint import manifest_beside
from guided_diffusion.script_util import model_and_diffusion_defaults
from guided_diffusion.targets import eps_error_per_target_error, target_of_mean_type
from guided_diffusion.weighting import snr_from_alphas_cumprod

from .models import make_diffusion
from .outputs import output_prefix, save_figure, write_csv
from .plotting import new_figure


def run_curve(name, path):
    """{"snr", "u", "weight"} of one checkpoint (a model or EMA file with its manifest beside it)."""
    manifest = manifest_beside(path)
    if manifest is None or not manifest.get("flags"):
        raise ValueError(f"--checkpoints {name}={path}: no checkpoint manifest with the run's flags beside it")
    flags = {**model_and_diffusion_defaults(), **{k: v for k, v in manifest["flags"].items() if k in model_and_diffusion_defaults()}}
    diffusion = make_diffusion(flags)
    snr = snr_from_alphas_cumprod(diffusion.alphas_cumprod)
    eps_weight = diffusion.mse_weights / eps_error_per_target_error(target_of_mean_type(diffusion.model_mean_type), snr)
    weight = effective_eps_weights(eps_weight, manifest["flags"].get("schedule_sampler", "uniform"), diffusion.alphas_cumprod)
    u = np.zeros_like(weight)
    file_name = (manifest.get("files") or {}).get(FILE_KEY)
    if file_name is not None:
        module = LogVariance(diffusion.alphas_cumprod)
        module.load_state_dict(torch.load(os.path.join(os.path.dirname(path), file_name), weights_only=True))
        with torch.no_grad():
            u = module(torch.arange(len(weight))).double().numpy()
    return {"snr": snr, "u": u, "weight": weight / np.exp(u), "learned": file_name is not None}


def learned_weights(specs):
    return {name: run_curve(name, path) for name, path in specs}


def write_learned_weights(curves, prefix):
    rows = [
        (t, name, float(c["snr"][t]), float(c["u"][t]), float(c["weight"][t]), float(c["weight"][t] / c["weight"].mean()))
        for name, c in curves.items()
        for t in range(len(c["snr"]))
    ]
    csv_path = write_csv(prefix + ".csv", ("t", "run", "snr", "u", "weight", "normalized_weight"), rows)
    figure = new_figure(7.0, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for index, (name, c) in enumerate(curves.items()):
        log_snr = np.log(c["snr"])
        style = dict(linewidth=2.5) if c["learned"] else dict(linestyle="--", linewidth=1.2)
        top.plot(log_snr, c["weight"] / c["weight"].mean(), color=f"C{index % 10}", label=name, **style)
        if c["learned"]:
            bottom.plot(log_snr, c["u"], color=f"C{index % 10}", label=f"u(t), {name}")
    top.set_yscale("log")
    top.set_ylim(1e-4, None)
    top.set_ylabel("effective eps weight / its mean")
    top.set_title("Effective weight on the epsilon error under uniform t (learned: solid)", fontsize=10)
    top.grid(True, which="major", alpha=0.3)
    top.legend(fontsize=7, ncol=2)
    bottom.invert_xaxis()
    bottom.set_xlabel("log SNR (t = 0 on the left, T-1 on the right)")
    bottom.set_ylabel("learned u")
    bottom.grid(True, alpha=0.3)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(fontsize=7)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run(specs, out=None):
    return write_learned_weights(learned_weights(specs), output_prefix(out, "learned_weights"))
