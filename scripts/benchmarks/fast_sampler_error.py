"""Error of the fast samplers against the exact probability-flow ODE solution for Gaussian data.

    python -m scripts.benchmarks.fast_sampler_error --noise_schedule linear --skip_type logSNR --steps 5,10,20

The data are N(m, S) over (1, 2, 2) "images" (S with eigenvalues 0.02, 0.1,
0.4, 0.9), the model is the exact noise predictor, and the reference is the
closed-form ODE map from t = 1 to t = 1/N; the table gives the mean L2 error
per sample at each number of model evaluations. DDIM is DPM-Solver++ of order 1.
A second table runs every registered fast sampler (`--sampler` of image_sample.py)
at its default settings, whatever --skip_type says, through the same code path as
the sampling script: today's defaults against the paper's own samplers.
"""

import argparse
import sys

import numpy as np
import torch

from guided_diffusion import samplers
from guided_diffusion.solvers.dpm_solver import sample_dpm_solver_pp
from guided_diffusion.solvers.fast_samplers import data_prediction, eps_model, solve
from guided_diffusion.gaussian_diffusion import ModelMeanType
from guided_diffusion.solvers.noise_schedule import SKIP_TYPES, DiscreteNoiseSchedule
from guided_diffusion.sampling import sampling_defaults
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.solvers.unipc import VARIANTS, sample_unipc
from tests.gaussian_oracle import ExactGaussianModel, GaussianData, GivenStart
from guided_diffusion.run.command_line import ArgumentParser

SOLVERS = [  # (label, solver, order, solver options)
    ("DDIM (DPM-Solver++ 1)", sample_dpm_solver_pp, 1, {}),
    ("DPM-Solver++(2M)", sample_dpm_solver_pp, 2, {}),
    ("DPM-Solver++(3M)", sample_dpm_solver_pp, 3, {}),
] + [(f"UniPC-{order} {variant}", sample_unipc, order, {"variant": variant}) for variant in VARIANTS for order in (1, 2, 3)]


def gaussian_data(seed):
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(4, 4)))
    covariance = basis @ np.diag([0.02, 0.1, 0.4, 0.9]) @ basis.T
    return GaussianData(np.array([0.3, -0.5, 0.1, 0.6]), (covariance + covariance.T) / 2)


def exact_problem(noise_schedule_name, num_samples, seed):
    """(diffusion, its continuous-time schedule, the exact model, x_T, the exact ODE solution from x_T)."""
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule=noise_schedule_name)
    schedule = DiscreteNoiseSchedule(diffusion.alphas_cumprod)
    data = gaussian_data(seed)
    model = ExactGaussianModel(data, diffusion.alphas_cumprod)
    x_T = torch.randn(num_samples, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = data.ode_map(
        x_T,
        (schedule.alpha(schedule.t_max), schedule.sigma(schedule.t_max)),
        (schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)),
    )
    return diffusion, schedule, model, x_T, exact


def error_table(noise_schedule_name, skip_type, steps_list, num_samples, seed):
    _, schedule, model, x_T, exact = exact_problem(noise_schedule_name, num_samples, seed)
    data_fn = data_prediction(eps_model(model, ModelMeanType.EPSILON, schedule), schedule)
    rows = []
    for label, solver, order, options in SOLVERS:
        errors = []
        for steps in steps_list:
            x = solve(solver, data_fn, x_T, schedule, steps, order=order, skip_type=skip_type, **options)
            errors.append((x - exact).flatten(1).norm(dim=1).mean().item())
        rows.append((label, errors))
    return rows


def registered_sampler_table(noise_schedule_name, steps_list, num_samples, seed):
    """Rows for every registered sampler that runs on the unspaced process (the fast ones), at default flags."""
    diffusion, _, model, x_T, exact = exact_problem(noise_schedule_name, num_samples, seed)
    rows = []
    for name in samplers.sampler_names():
        sampler = samplers.get_sampler(name)
        if sampler.respaced:
            continue
        errors = []
        for steps in steps_list:
            flags = {**sampling_defaults(), "sampler": name, "timestep_respacing": str(steps)}
            x = sampler.run(model, diffusion, x_T.shape, model_kwargs={}, noise_source=GivenStart(x_T),
                            device=torch.device("cpu"), flags=flags)
            errors.append((x - exact).flatten(1).norm(dim=1).mean().item())
        rows.append((f"--sampler {name}", errors))
    return rows


def print_table(rows, steps_list):
    width = max(len(label) for label, _ in rows)
    print(f"{'sampler':<{width}} " + " ".join(f"{f'NFE={s}':>10}" for s in steps_list))
    for label, errors in rows:
        print(f"{label:<{width}} " + " ".join(f"{e:10.2e}" for e in errors))


def parse_steps(text):
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"--steps must be positive, got {text!r}")
    return steps


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise_schedule", default="linear", choices=["linear", "cosine"])
    parser.add_argument("--skip_type", default="logSNR", choices=SKIP_TYPES)
    parser.add_argument("--steps", type=parse_steps, default=[5, 10, 20], help="numbers of model evaluations")
    parser.add_argument("--num_samples", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num_samples must be positive, got {args.num_samples}")

    rows = error_table(args.noise_schedule, args.skip_type, args.steps, args.num_samples, args.seed)
    print(f"mean L2 error vs exact ODE solution; {args.noise_schedule} schedule, {args.skip_type} steps, "
          f"{args.num_samples} samples of 4-D Gaussian data")
    print_table(rows, args.steps)
    print(f"\nthe registered fast samplers at their default settings; {args.noise_schedule} schedule")
    print_table(registered_sampler_table(args.noise_schedule, args.steps, args.num_samples, args.seed), args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
