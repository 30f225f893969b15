"""ADM's UNet (Dhariwal & Nichol, 2021): the denoiser of every model in this repository.

Module layout, attribute names and therefore state-dict keys are ADM's, so released
guided-diffusion and P2-weighting checkpoints load with `strict=True`. Attention runs
through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on CUDA)
while splitting heads exactly as ADM does.
"""

from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    convert_module_to_f16,
    convert_module_to_f32,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    @abstractmethod
    def forward(self, x, emb):
        """Apply the module to `x` given the timestep embedding `emb`."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential container that hands the timestep embedding to the children that take it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


def _check_channels(module_name, x, channels):
    if x.shape[1] != channels:
        raise ValueError(f"{module_name}: expected {channels} input channels, got {x.shape[1]}")


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution.

    With dims=3 only the inner two (spatial) dimensions are upsampled.
    """

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)
        elif self.out_channels != self.channels:
            raise ValueError(
                f"Upsample without a convolution cannot change channels ({channels} -> {out_channels})"
            )

    def forward(self, x):
        _check_channels("Upsample", x, self.channels)
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 convolution or by average pooling.

    With dims=3 only the inner two (spatial) dimensions are downsampled.
    """

    def __init__(self, channels, use_conv, dims=2, out_channels=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        stride = (1, 2, 2) if dims == 3 else 2
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        elif self.out_channels != self.channels:
            raise ValueError(
                f"Downsample without a convolution cannot change channels ({channels} -> {out_channels})"
            )
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x):
        _check_channels("Downsample", x, self.channels)
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling.

    The embedding is either added to the features (use_scale_shift_norm=False) or
    used as a FiLM scale and shift after the second normalisation (BigGAN-style
    adaptive group norm, ADM's default for its best models).
    """

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_conv=False,
        use_scale_shift_norm=False,
        dims=2,
        use_checkpoint=False,
        up=False,
        down=False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )

        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )

        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.use_checkpoint)

    def _forward(self, x, emb):
        if self.updown:
            # Resample between the activation and the convolution so the convolution
            # runs at the output resolution, as in BigGAN's up/down residual blocks.
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _attention_heads(channels, num_heads, num_head_channels):
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be positive and divide channels={channels}")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(
            f"num_head_channels={num_head_channels} must be positive and divide channels={channels}"
        )
    return channels // num_head_channels


def _sdpa_heads(q, k, v):
    """Attention over the last axis of (B, H, C, T) tensors; returns (B, H*C, T)."""
    batch, heads, head_channels, length = q.shape
    # SDPA wants (..., T, C) with a contiguous channel axis; its default 1/sqrt(C)
    # scale equals ADM's 1/sqrt(sqrt(C)) applied to both q and k.
    q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(batch, heads * head_channels, length)


class QKVAttentionLegacy(nn.Module):
    """Multi-head attention on a (B, 3*H*C, T) qkv tensor laid out head-major.

    Each head's q, k and v are adjacent: the tensor is viewed as (B*H, 3*C, T) and then
    split into q, k, v. This is the order of ADM's released checkpoints.
    """

    def __init__(self, n_heads):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv):
        batch, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"QKVAttentionLegacy: width {width} not divisible by 3*{self.n_heads}")
        head_channels = width // (3 * self.n_heads)
        per_head = qkv.reshape(batch, self.n_heads, 3 * head_channels, length)
        q, k, v = per_head.split(head_channels, dim=2)
        return _sdpa_heads(q, k, v)


class QKVAttention(nn.Module):
    """Multi-head attention on a (B, 3*H*C, T) qkv tensor laid out q, k, v-major.

    The tensor is first split into q, k, v of (B, H*C, T), each then viewed as
    (B*H, C, T). Used when use_new_attention_order=True.
    """

    def __init__(self, n_heads):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv):
        batch, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"QKVAttention: width {width} not divisible by 3*{self.n_heads}")
        head_channels = width // (3 * self.n_heads)
        q, k, v = (
            t.reshape(batch, self.n_heads, head_channels, length) for t in qkv.chunk(3, dim=1)
        )
        return _sdpa_heads(q, k, v)


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions.

    num_head_channels != -1 fixes the channels per head and overrides num_heads.
    """

    def __init__(
        self,
        channels,
        num_heads=1,
        num_head_channels=-1,
        use_checkpoint=False,
        use_new_attention_order=False,
    ):
        super().__init__()
        self.channels = channels
        self.num_heads = _attention_heads(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        attention_class = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention_class(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x):
        return checkpoint(self._forward, (x,), self.use_checkpoint)

    def _forward(self, x):
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(batch, channels, *spatial)


class UNetModel(nn.Module):
    """ADM's UNet with timestep (and optional class) conditioning.

    :param image_size: input resolution (recorded; the network is fully convolutional).
    :param in_channels: channels of the input image.
    :param model_channels: base channel count.
    :param out_channels: output channels (2*in_channels when the variance is learned).
    :param num_res_blocks: residual blocks per resolution.
    :param attention_resolutions: downsample rates (1, 2, 4, ...) at which to attend.
    :param dropout: dropout probability inside residual blocks.
    :param channel_mult: channel multiplier per resolution level.
    :param conv_resample: learned convolutions (rather than pooling / plain
        upsampling) for resampling between levels.
    :param dims: 1, 2 or 3 for signals, images or video.
    :param num_classes: number of classes for class conditioning, or None.
    :param use_checkpoint: gradient checkpointing to save memory.
    :param use_fp16: run the body in float16 (call `convert_to_fp16()` to cast weights).
    :param num_heads: attention heads per attention layer.
    :param num_head_channels: channels per head, overriding num_heads when not -1.
    :param num_heads_upsample: heads in the upsampling path (-1: num_heads).
    :param use_scale_shift_norm: FiLM-like conditioning in residual blocks.
    :param resblock_updown: residual blocks for up/downsampling.
    :param use_new_attention_order: split qkv before heads (QKVAttention).
    """

    def __init__(
        self,
        image_size,
        in_channels,
        model_channels,
        out_channels,
        num_res_blocks,
        attention_resolutions,
        dropout=0,
        channel_mult=(1, 2, 4, 8),
        conv_resample=True,
        dims=2,
        num_classes=None,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        def res_block(channels, out_ch, up=False, down=False):
            return ResBlock(
                channels,
                time_embed_dim,
                dropout,
                out_channels=out_ch,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                up=up,
                down=down,
            )

        def attention_block(channels, heads):
            return AttentionBlock(
                channels,
                num_heads=heads,
                num_head_channels=num_head_channels,
                use_checkpoint=use_checkpoint,
                use_new_attention_order=use_new_attention_order,
            )

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, ch, 3, padding=1))]
        )
        # Channel count of every input-block output, consumed in reverse by the skip
        # connections of the output blocks.
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention_block(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                if resblock_updown:
                    downsample = res_block(ch, ch, down=True)
                else:
                    downsample = Downsample(ch, conv_resample, dims=dims, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(downsample))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch),
            attention_block(ch, num_heads),
            res_block(ch, ch),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention_block(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(res_block(ch, ch, up=True))
                    else:
                        layers.append(Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self):
        """Cast the convolutions of the torso to float16 (norms, embeddings and the head stay float32)."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f16)

    def convert_to_fp32(self):
        """Undo `convert_to_fp16`."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f32)

    def forward(self, x, timesteps, y=None):
        """Predict from a noisy batch.

        :param x: [N, C, ...] inputs.
        :param timesteps: [N] timesteps (integer or fractional).
        :param y: [N] integer labels, required exactly when the model is class-conditional.
        :return: [N, out_channels, ...] outputs in x's dtype.
        """
        if (y is None) != (self.num_classes is None):
            if y is None:
                raise ValueError("UNetModel: class-conditional model (num_classes set) needs labels y")
            raise ValueError("UNetModel: labels y given to a model built without num_classes")

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"UNetModel: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)

        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
