"""Small building blocks shared by the UNet and the training loop.

Names and behaviour follow ADM (Dhariwal & Nichol, 2021) so that its checkpoints and
call sites work unchanged.
"""

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

_CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL_CLASSES = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_CONV_TYPES = tuple(_CONV_CLASSES.values())


def _pick(classes, dims, what):
    if dims not in classes:
        raise ValueError(f"{what}: dims must be 1, 2 or 3, got {dims!r}")
    return classes[dims]


def conv_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D convolution."""
    return _pick(_CONV_CLASSES, dims, "conv_nd")(*args, **kwargs)


def linear(*args, **kwargs):
    """A fully connected layer."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D average pooling."""
    return _pick(_AVG_POOL_CLASSES, dims, "avg_pool_nd")(*args, **kwargs)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes its statistics in float32.

    Half-precision activations would lose too much in the variance, so the input is
    promoted and the result cast back to the input's dtype.
    """

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    """ADM's normalisation layer: 32-group GroupNorm computed in float32."""
    return GroupNorm32(32, channels)


def zero_module(module):
    """Zero every parameter of `module` in place and return it.

    Residual branches end in a zeroed layer so each block starts as the identity.
    """
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps, shape [N] -> [N, dim].

    Frequencies are geometric from 1 down to 1/max_period; cosines come first, then
    sines, and an odd `dim` gets one trailing zero column.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func, inputs, enabled):
    """Evaluate `func(*inputs)`, recomputing its activations in the backward pass if `enabled`.

    Trades compute for memory; gradients are identical either way.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


@torch.no_grad()
def update_ema(target_params, source_params, rate=0.99):
    """In place: target <- rate * target + (1 - rate) * source."""
    for target, source in zip(target_params, source_params):
        target.mul_(rate).add_(source, alpha=1 - rate)


def convert_module_to_f16(module):
    """Cast a convolution's weight and bias to float16 (other layers are left alone, as in ADM)."""
    if isinstance(module, _CONV_TYPES):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module):
    """Undo `convert_module_to_f16`."""
    if isinstance(module, _CONV_TYPES):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()
