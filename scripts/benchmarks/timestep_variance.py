"""Per-batch variance of the weighted training loss and of its gradient: uniform t against `loss-weight` sampling.

    python -m scripts.benchmarks.timestep_variance [--batches 400] [--grad_batches 60] [--batch_size 8]

For each weighting (debias, p2, min_snr) a tiny UNet with fixed random weights
(tests/tiny.py, learned variance, T=1000 linear as in the paper's configs)
scores batches of 8 images drawn from a fixed synthetic set. The estimate of
one batch is mean_i(importance_i * loss_i), the quantity the training loop
backpropagates. Printed: its mean and variance over batches under each sampler
and the ratio var(loss-weight) / var(uniform), for the whole loss and for the
MSE term alone (the VB term of learned-variance models is reweighted too), and
the trace of the gradient's covariance over batches. A number, not a timing.
"""

import argparse

import numpy as np
import torch

from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import create_model_and_diffusion
from tests.tiny import tiny_flags
from guided_diffusion.run.command_line import ArgumentParser

SCHEDULES = ("debias", "p2", "min_snr")
SAMPLERS = ("uniform", "loss-weight")


def synthetic_images(count, size, seed):
    """Smooth random images in [-1, 1]: a coarse random field upsampled, so that denoising is not trivial."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def build(schedule, seed):
    flags = tiny_flags(diffusion_steps=1000, weight_schedule=schedule)
    torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**flags)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # ADM zero-initialises output layers: random weights everywhere give a model whose error depends on t.
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / np.sqrt(p[0].numel() if p.ndim > 1 else 1))
    return model, diffusion, flags["image_size"]


def batch_estimates(model, diffusion, sampler, images, batch_size, seed, batches, with_grad):
    np.random.seed(seed)
    torch.manual_seed(seed)
    losses, mses, grads = [], [], []
    for _ in range(batches):
        x0 = images[torch.randint(0, len(images), (batch_size,))]
        t, importance = sampler.sample(batch_size, "cpu")
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(with_grad):
            terms = diffusion.training_losses(model, x0, t)
            loss = (terms["loss"] * importance).mean()
        weighted_mse = torch.as_tensor(diffusion.mse_weights, dtype=torch.float32)[t] * terms["mse"].detach()
        losses.append(float(loss.detach()))
        mses.append(float((weighted_mse * importance).mean()))
        if with_grad:
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).numpy().copy())
    return np.array(losses), np.array(mses), (np.stack(grads) if with_grad else None)


def gradient_variance(grads):
    """Trace of the covariance of the per-batch gradient: E ||g - E g||^2."""
    return float(((grads - grads.mean(axis=0)) ** 2).sum(axis=1).mean() * len(grads) / (len(grads) - 1))


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=400, help="batches for the loss variance")
    parser.add_argument("--grad_batches", type=int, default=60, help="batches for the gradient variance (0: skip)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in (("--batches", args.batches), ("--batch_size", args.batch_size)):
        if value < 2:
            parser.error(f"{name} must be at least 2, got {value}")
    if args.grad_batches == 1 or args.grad_batches < 0:
        parser.error(f"--grad_batches must be 0 or at least 2, got {args.grad_batches}")
    torch.set_num_threads(1)
    print(f"tiny UNet 16x16, learned variance, T=1000 linear, batch {args.batch_size}; "
          f"{args.batches} batches (loss), {args.grad_batches} batches (gradient)")
    print(f"{'weighting':<9} {'sampler':<12} {'loss mean':>10} {'loss var':>11} {'mse var':>11} {'grad var':>11}")
    for schedule in SCHEDULES:
        model, diffusion, size = build(schedule, args.seed)
        images = synthetic_images(256, size, args.seed)
        rows = {}
        for name in SAMPLERS:
            sampler = create_named_schedule_sampler(name, diffusion)
            losses, mses, _ = batch_estimates(model, diffusion, sampler, images, args.batch_size, args.seed + 1,
                                              args.batches, with_grad=False)
            grad_var = float("nan")
            if args.grad_batches:
                _, _, grads = batch_estimates(model, diffusion, sampler, images, args.batch_size, args.seed + 2,
                                              args.grad_batches, with_grad=True)
                grad_var = gradient_variance(grads)
            rows[name] = (losses.mean(), losses.var(ddof=1), mses.var(ddof=1), grad_var)
            print(f"{schedule:<9} {name:<12} {rows[name][0]:>10.4g} {rows[name][1]:>11.4g} {rows[name][2]:>11.4g} "
                  f"{grad_var:>11.4g}")
        ratio = [rows["loss-weight"][i] / rows["uniform"][i] for i in (1, 2, 3)]
        print(f"{schedule:<9} {'ratio':<12} {'':>10} {ratio[0]:>11.3g} {ratio[1]:>11.3g} {ratio[2]:>11.3g}"
              "   (loss-weight / uniform)")


if __name__ == "__main__":
    main()
