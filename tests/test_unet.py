"""Tests for guided_diffusion/nn.py and guided_diffusion/unet.py (ADM's UNet)."""

import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

from guided_diffusion import nn as gd_nn
from guided_diffusion.unet import AttentionBlock, QKVAttention, QKVAttentionLegacy, ResBlock, UNetModel

torch.set_num_threads(1)


def tiny_unet(**overrides):
    kwargs = dict(
        image_size=16,
        in_channels=3,
        model_channels=32,
        out_channels=3,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 2),
    )
    kwargs.update(overrides)
    return UNetModel(**kwargs)


@torch.no_grad()
def randomize(model, seed=0):
    """Give every parameter (including ADM's zero-initialised ones) a random value,
    so outputs actually depend on every layer."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        fan_in = p[0].numel() if p.ndim > 1 else 1
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / math.sqrt(fan_in))
    return model


def inputs(batch, channels, size, seed=1, dims=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *([size] * dims), generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t


# ---------------------------------------------------------------- nn.py


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_matches_closed_form(dim):
    t = torch.tensor([0.0, 1.5, 17.0, 999.0])
    emb = gd_nn.timestep_embedding(t, dim, max_period=10000).numpy()
    half = dim // 2
    expected = np.zeros((4, dim))
    for row, step in enumerate(t.double().numpy()):
        for j in range(half):
            freq = 10000.0 ** (-j / half)
            expected[row, j] = math.cos(step * freq)
            expected[row, half + j] = math.sin(step * freq)
    assert emb.shape == (4, dim)
    np.testing.assert_allclose(emb, expected, atol=2e-4)
    if dim % 2:
        assert np.all(emb[:, -1] == 0)


def test_group_norm32_computes_in_float32_and_returns_input_dtype():
    norm = gd_nn.normalization(64)
    assert norm.num_groups == 32
    x = torch.randn(2, 64, 5, generator=torch.Generator().manual_seed(0)).half()
    out = norm(x)
    assert out.dtype == torch.float16
    grouped = x.float().reshape(2, 32, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    expected = ((grouped - mean) / torch.sqrt(var + norm.eps)).reshape(x.shape).half()
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_small_helpers():
    conv = gd_nn.zero_module(gd_nn.conv_nd(2, 3, 4, 3))
    assert all(torch.count_nonzero(p) == 0 for p in conv.parameters())
    assert isinstance(gd_nn.conv_nd(1, 2, 2, 1), torch.nn.Conv1d)
    assert isinstance(gd_nn.conv_nd(3, 2, 2, 1), torch.nn.Conv3d)
    assert isinstance(gd_nn.avg_pool_nd(2, 2), torch.nn.AvgPool2d)
    with pytest.raises(ValueError, match="dims"):
        gd_nn.conv_nd(4, 2, 2, 1)

    target = [torch.full((3,), 1.0)]
    gd_nn.update_ema(target, [torch.full((3,), 3.0)], rate=0.75)
    torch.testing.assert_close(target[0], torch.full((3,), 0.75 * 1.0 + 0.25 * 3.0))


# ---------------------------------------------------------------- shapes


GRID = list(itertools.product([32, 16], [False, True], [False, True], [False, True], [-1, 16]))


@pytest.mark.parametrize(
    "size,scale_shift,updown,new_order,head_channels",
    GRID,
    ids=[f"s{s}-ss{int(a)}-ud{int(b)}-new{int(c)}-hc{d}" for s, a, b, c, d in GRID],
)
def test_output_shape_over_option_grid(size, scale_shift, updown, new_order, head_channels):
    torch.manual_seed(0)
    model = tiny_unet(
        image_size=size,
        channel_mult=(1, 2, 2) if size == 32 else (1, 2),
        attention_resolutions={2, 4},
        use_scale_shift_norm=scale_shift,
        resblock_updown=updown,
        use_new_attention_order=new_order,
        num_heads=2,
        num_head_channels=head_channels,
    )
    randomize(model)
    x, t = inputs(2, 3, size)
    with torch.no_grad():
        out = model(x, t)
        out_other_t = model(x, t + 1)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, out_other_t)


@pytest.mark.parametrize("dims", [1, 3])
def test_other_dims(dims):
    model = randomize(tiny_unet(dims=dims, image_size=8))
    x, t = inputs(1, 3, 8, dims=dims)
    with torch.no_grad():
        assert model(x, t).shape == x.shape


def test_fresh_model_outputs_zero_because_head_is_zero_initialised():
    model = tiny_unet()
    x, t = inputs(2, 3, 16)
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t)) == 0


def test_learn_sigma_doubles_output_channels():
    model = randomize(tiny_unet(out_channels=6))
    x, t = inputs(2, 3, 16)
    with torch.no_grad():
        assert model(x, t).shape == (2, 6, 16, 16)


def test_class_conditional_requires_and_uses_labels():
    model = randomize(tiny_unet(num_classes=5))
    x, t = inputs(2, 3, 16)
    with pytest.raises(ValueError, match="needs labels"):
        model(x, t)
    with pytest.raises(ValueError, match="shape"):
        model(x, t, y=torch.tensor([1]))
    with torch.no_grad():
        out_a = model(x, t, y=torch.tensor([1, 2]))
        out_b = model(x, t, y=torch.tensor([1, 4]))
    assert model.label_emb.weight.shape == (5, 128)
    # Every layer acts per sample, so changing sample 1's label leaves sample 0 alone.
    torch.testing.assert_close(out_a[0], out_b[0], rtol=0, atol=0)
    assert not torch.allclose(out_a[1], out_b[1])

    unconditional = tiny_unet()
    with pytest.raises(ValueError, match="without num_classes"):
        unconditional(x, t, y=torch.tensor([0, 1]))


def test_bad_head_configuration_raises():
    with pytest.raises(ValueError, match="num_head_channels=24"):
        tiny_unet(num_head_channels=24)
    with pytest.raises(ValueError, match="num_heads=3"):
        tiny_unet(num_heads=3)


# ---------------------------------------------------------------- fp16


def test_fp16_conversion():
    model = randomize(tiny_unet(use_fp16=True, num_classes=3, use_scale_shift_norm=True))
    reference = tiny_unet(num_classes=3, use_scale_shift_norm=True)
    reference.load_state_dict(model.state_dict())
    model.convert_to_fp16()
    assert model.dtype == torch.float16

    torso = (model.input_blocks, model.middle_block, model.output_blocks)
    for part in torso:
        for module in part.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                assert all(p.dtype == torch.float16 for p in module.parameters())
            elif isinstance(module, (torch.nn.GroupNorm, torch.nn.Linear)):
                assert all(p.dtype == torch.float32 for p in module.parameters())
    for part in (model.time_embed, model.label_emb, model.out):
        assert all(p.dtype == torch.float32 for p in part.parameters())

    x, t = inputs(2, 3, 16)
    y = torch.tensor([0, 2])
    with torch.no_grad():
        out = model(x, t, y)
        expected = reference(x, t, y)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    rel_err = (out - expected).norm() / expected.norm()
    assert rel_err < 2e-2

    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------- state dict


def resblock_keys(prefix, cin, cout, emb, scale_shift):
    keys = {
        f"{prefix}.in_layers.0.weight": (cin,),
        f"{prefix}.in_layers.0.bias": (cin,),
        f"{prefix}.in_layers.2.weight": (cout, cin, 3, 3),
        f"{prefix}.in_layers.2.bias": (cout,),
        f"{prefix}.emb_layers.1.weight": ((2 if scale_shift else 1) * cout, emb),
        f"{prefix}.emb_layers.1.bias": ((2 if scale_shift else 1) * cout,),
        f"{prefix}.out_layers.0.weight": (cout,),
        f"{prefix}.out_layers.0.bias": (cout,),
        f"{prefix}.out_layers.3.weight": (cout, cout, 3, 3),
        f"{prefix}.out_layers.3.bias": (cout,),
    }
    if cin != cout:
        keys[f"{prefix}.skip_connection.weight"] = (cout, cin, 1, 1)
        keys[f"{prefix}.skip_connection.bias"] = (cout,)
    return keys


def attention_keys(prefix, c):
    return {
        f"{prefix}.norm.weight": (c,),
        f"{prefix}.norm.bias": (c,),
        f"{prefix}.qkv.weight": (3 * c, c, 1),
        f"{prefix}.qkv.bias": (3 * c,),
        f"{prefix}.proj_out.weight": (c, c, 1),
        f"{prefix}.proj_out.bias": (c,),
    }


@pytest.mark.parametrize("updown", [False, True])
def test_state_dict_keys_and_shapes_are_adms(updown):
    """Layout written out from ADM's architecture for model_channels=32,
    channel_mult=(1, 2), num_res_blocks=1, attention at ds=2, 4 classes."""
    model = tiny_unet(
        out_channels=6, num_classes=4, use_scale_shift_norm=True, resblock_updown=updown
    )
    emb = 128
    expected = {
        "time_embed.0.weight": (emb, 32),
        "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb),
        "time_embed.2.bias": (emb,),
        "label_emb.weight": (4, emb),
        "input_blocks.0.0.weight": (32, 3, 3, 3),
        "input_blocks.0.0.bias": (32,),
        "out.0.weight": (32,),
        "out.0.bias": (32,),
        "out.2.weight": (6, 32, 3, 3),
        "out.2.bias": (6,),
    }
    expected.update(resblock_keys("input_blocks.1.0", 32, 32, emb, True))
    if updown:
        expected.update(resblock_keys("input_blocks.2.0", 32, 32, emb, True))
    else:
        expected["input_blocks.2.0.op.weight"] = (32, 32, 3, 3)
        expected["input_blocks.2.0.op.bias"] = (32,)
    expected.update(resblock_keys("input_blocks.3.0", 32, 64, emb, True))
    expected.update(attention_keys("input_blocks.3.1", 64))
    expected.update(resblock_keys("middle_block.0", 64, 64, emb, True))
    expected.update(attention_keys("middle_block.1", 64))
    expected.update(resblock_keys("middle_block.2", 64, 64, emb, True))
    # Skip channels pushed by the input blocks: [32, 32, 32, 64], popped in reverse.
    expected.update(resblock_keys("output_blocks.0.0", 64 + 64, 64, emb, True))
    expected.update(attention_keys("output_blocks.0.1", 64))
    expected.update(resblock_keys("output_blocks.1.0", 64 + 32, 64, emb, True))
    expected.update(attention_keys("output_blocks.1.1", 64))
    if updown:
        expected.update(resblock_keys("output_blocks.1.2", 64, 64, emb, True))
    else:
        expected["output_blocks.1.2.conv.weight"] = (64, 64, 3, 3)
        expected["output_blocks.1.2.conv.bias"] = (64,)
    expected.update(resblock_keys("output_blocks.2.0", 64 + 32, 32, emb, True))
    expected.update(resblock_keys("output_blocks.3.0", 32 + 32, 32, emb, True))

    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == expected


def test_state_dict_round_trip():
    model = randomize(tiny_unet(num_classes=3, use_new_attention_order=True))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny_unet(num_classes=3, use_new_attention_order=True)
    restored.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x, t = inputs(2, 3, 16)
    y = torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(restored(x, t, y), model(x, t, y), rtol=0, atol=0)


# ---------------------------------------------------------------- attention


def einsum_attention(qkv, heads, new_order):
    """Plain softmax attention with ADM's two head layouts, written independently."""
    batch, width, length = qkv.shape
    c = width // (3 * heads)
    if new_order:
        q, k, v = (part.reshape(batch * heads, c, length) for part in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(batch * heads, 3 * c, length).split(c, dim=1)
    scale = 1 / math.sqrt(math.sqrt(c))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(batch, heads * c, length)


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("new_order", [False, True])
def test_sdpa_attention_matches_einsum_reference(heads, new_order):
    qkv = torch.randn(3, 3 * heads * 8, 10, generator=torch.Generator().manual_seed(heads))
    module = QKVAttention(heads) if new_order else QKVAttentionLegacy(heads)
    torch.testing.assert_close(module(qkv), einsum_attention(qkv, heads, new_order))


def test_head_orders_agree_for_one_head_and_differ_for_several():
    qkv = torch.randn(2, 3 * 2 * 8, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(QKVAttention(1)(qkv), QKVAttentionLegacy(1)(qkv))
    assert not torch.allclose(QKVAttention(2)(qkv), QKVAttentionLegacy(2)(qkv), atol=1e-3)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_is_residual_attention(new_order):
    block = randomize(
        AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order)
    )
    assert block.num_heads == 4
    x = torch.randn(2, 64, 3, 4, generator=torch.Generator().manual_seed(5))
    flat = x.reshape(2, 64, 12)
    qkv = block.qkv(block.norm(flat))
    expected = flat + block.proj_out(einsum_attention(qkv, 4, new_order))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected.reshape(x.shape).detach())


# ---------------------------------------------------------------- checkpointing


def test_gradient_checkpointing_gives_same_gradients(monkeypatch):
    kwargs = dict(num_classes=3, use_scale_shift_norm=True, resblock_updown=True)
    plain = randomize(tiny_unet(**kwargs))
    checkpointed = tiny_unet(use_checkpoint=True, **kwargs)
    checkpointed.load_state_dict(plain.state_dict())

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    x, t = inputs(2, 3, 16)
    y = torch.tensor([0, 2])
    grads = []
    for model in (plain, checkpointed):
        calls.clear()
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if model is plain:
            assert calls == []
    n_blocks = sum(isinstance(m, (AttentionBlock, ResBlock)) for m in checkpointed.modules())
    assert calls == [False] * n_blocks
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------- ADM configurations


def test_adm_256_unconditional_parameter_count():
    with torch.device("meta"):
        model = UNetModel(
            image_size=256,
            in_channels=3,
            model_channels=256,
            out_channels=6,
            num_res_blocks=2,
            attention_resolutions={256 // 32, 256 // 16, 256 // 8},
            dropout=0.0,
            channel_mult=(1, 1, 2, 2, 4, 4),
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=True,
        )
        out = model(torch.empty(1, 3, 256, 256), torch.zeros(1))
    assert sum(p.numel() for p in model.parameters()) == 552_814_086
    assert out.shape == (1, 6, 256, 256)


@pytest.mark.parametrize(
    "size,channels,blocks,mult,extra",
    [
        (64, 192, 3, (1, 2, 3, 4), dict(use_new_attention_order=True)),
        (128, 256, 2, (1, 1, 2, 3, 4), dict(num_heads=4)),
    ],
)
def test_adm_imagenet_conditional_configs_shapes(size, channels, blocks, mult, extra):
    with torch.device("meta"):
        model = UNetModel(
            image_size=size,
            in_channels=3,
            model_channels=channels,
            out_channels=6,
            num_res_blocks=blocks,
            attention_resolutions={size // 32, size // 16, size // 8},
            dropout=0.1,
            channel_mult=mult,
            num_classes=1000,
            num_head_channels=64,
            use_scale_shift_norm=True,
            resblock_updown=True,
            **extra,
        )
        out = model(torch.empty(2, 3, size, size), torch.zeros(2), y=torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 6, size, size)
    attention_blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    # Attention at three resolutions: blocks per level down, per level up, plus the middle.
    assert len(attention_blocks) == 3 * blocks + 3 * (blocks + 1) + 1
    assert all(m.num_heads == m.channels // 64 for m in attention_blocks)
