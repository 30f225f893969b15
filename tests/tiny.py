"""The tiny UNet every test and the throughput benchmark use, defined once, and helpers to save it.

The smallest UNet that exercises every ADM block: two resolutions, attention at the
second, learned variance (so the VB term is trained). GroupNorm needs channels
divisible by 32. Tests that need another size or process give overrides.
"""

import math

import torch

from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

TINY_MODEL_FLAGS = dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="8",
    num_head_channels=16,
    learn_sigma=True,
    diffusion_steps=100,
    noise_schedule="linear",
)

# The same network at 8x8 (attention stays at the second resolution), for tests that run it many times.
TINY_8X8 = dict(TINY_MODEL_FLAGS, image_size=8, attention_resolutions="4")


def tiny_flags(**overrides):
    """Every model and diffusion flag: ADM's defaults, the tiny model, then `overrides`."""
    return {**model_and_diffusion_defaults(), **TINY_MODEL_FLAGS, **overrides}


def flag_list(flags):
    """`--key value` command-line arguments for a dict of flags."""
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def save_random_checkpoint(path, flags, seed=0, perturbation=None):
    """Build the UNet of `flags` and save its state dict; returns the model in eval mode.

    ADM zero-initialises the output layers, so an untrained model predicts zeros. With
    `perturbation` every weight gets that much Gaussian noise (samples stay in range, as
    for a trained model); without, every weight is drawn afresh at fan-in scale.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, _ = create_model_and_diffusion(**flags)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=generator)
            if perturbation is None:
                p.copy_(noise / math.sqrt(p[0].numel() if p.ndim > 1 else 1))
            else:
                p.add_(perturbation * noise)
    torch.save(model.state_dict(), path)
    return model.eval()
