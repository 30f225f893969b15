"""Noise drawn on the sampling device (`noise.DeviceIndexedNoise`, run here with device cpu): still a
function of (seed, index) alone, whatever the batch or shard split, and `--noise_device cpu` keeps
today's numbers. The CUDA side (Philox, other numbers) is in test_cuda.py."""

import numpy as np
import pytest
import torch

from guided_diffusion import sampling
from guided_diffusion.run import fast_paths
from guided_diffusion.run.fast_paths import FastPathOptions
from guided_diffusion.noise import DeviceIndexedNoise, IndexedNoise, noise_source, resolve_noise_device, sample_seed

CPU = torch.device("cpu")
SHAPE = (3, 4, 4)
STEPS = 3


def draws(source, batch):
    x = torch.empty((batch,) + SHAPE)
    return [source.randn_like(x) for _ in range(STEPS)]


def concatenated(parts):
    return [torch.cat(step) for step in zip(*parts)]


def test_device_noise_is_the_same_for_any_batch_size():
    whole = draws(DeviceIndexedNoise(3, range(12), CPU), 12)
    for batch in (1, 5, 7):
        chunks = [list(range(i, min(i + batch, 12))) for i in range(0, 12, batch)]
        split = concatenated([draws(DeviceIndexedNoise(3, chunk, CPU), len(chunk)) for chunk in chunks])
        for a, b in zip(whole, split):
            assert torch.equal(a, b)


@pytest.mark.parametrize("world_size", [2, 3])
def test_device_noise_is_the_same_for_any_world_size_or_shard_split(world_size):
    """Rank r takes every world-th batch of the grid (sampling.py); each sample keeps its noise."""
    batch, total = 4, 14
    grid = [list(range(i, min(i + batch, total))) for i in range(0, total, batch)]
    by_index = {}
    for rank in range(world_size):
        for indices in grid[rank::world_size]:
            for step, rows in enumerate(draws(DeviceIndexedNoise(9, indices, CPU), len(indices))):
                for index, row in zip(indices, rows):
                    by_index[(index, step)] = row
    one_rank = draws(DeviceIndexedNoise(9, range(total), CPU), total)
    for (index, step), row in by_index.items():
        assert torch.equal(row, one_rank[step][index])


def test_device_noise_depends_on_seed_and_index_only():
    a = DeviceIndexedNoise(1, [4, 5], CPU).randn_like(torch.empty((2,) + SHAPE))
    b = DeviceIndexedNoise(1, [5, 4], CPU).randn_like(torch.empty((2,) + SHAPE))
    assert torch.equal(a, b.flip(0))
    assert not torch.equal(a, DeviceIndexedNoise(2, [4, 5], CPU).randn_like(torch.empty((2,) + SHAPE)))


def test_cpu_noise_is_unchanged_and_equals_device_noise_on_the_cpu():
    """IndexedNoise's numbers, pinned: a generator per sample seeded by sample_seed, rows drawn in turn."""
    expected = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(sample_seed(0, i)))
                            for i in (2, 3)])
    assert sample_seed(0, 2) == int((lambda s: (int(s[0]) << 31) ^ int(s[1]))(
        np.random.SeedSequence([0, 2]).generate_state(2, dtype=np.uint32)))
    x = torch.empty((2,) + SHAPE)
    assert torch.equal(IndexedNoise(0, [2, 3]).randn_like(x), expected)
    assert torch.equal(DeviceIndexedNoise(0, [2, 3], CPU).randn_like(x), expected)
    assert isinstance(noise_source(0, [2, 3], "cpu", CPU), IndexedNoise)
    assert isinstance(noise_source(0, [2, 3], "cpu", torch.device("cuda")), IndexedNoise)


def test_device_noise_keeps_float32_draws_for_any_precision():
    x = torch.empty((2,) + SHAPE, dtype=torch.bfloat16)
    drawn = DeviceIndexedNoise(0, [0, 1], CPU).randn_like(x)
    assert drawn.dtype == torch.bfloat16
    assert torch.equal(drawn, IndexedNoise(0, [0, 1]).randn_like(torch.empty((2,) + SHAPE)).to(torch.bfloat16))


@pytest.mark.parametrize(
    "value, device_type, expected",
    [("", "cuda", "cuda"), ("device", "cuda", "cuda"), ("cpu", "cuda", "cpu"), ("cuda", "cuda", "cuda"),
     ("", "cpu", "cpu"), ("device", "cpu", "cpu"), ("", None, ""), ("device", None, "device")],
)
def test_noise_device_resolves_per_device_type(value, device_type, expected):
    assert resolve_noise_device(value, device_type) == expected


@pytest.mark.parametrize("value, device_type", [("gpu", "cuda"), ("cuda", "cpu"), ("mps", None)])
def test_unknown_noise_device_is_an_error(value, device_type):
    with pytest.raises(ValueError, match="--noise_device"):
        resolve_noise_device(value, device_type)


def test_sampling_flags_resolve_the_noise_device_and_record_it_only_when_it_is_not_the_cpu():
    base = dict(model_path="m.pt", out_dir="o")
    on_cuda = sampling.validate_flags(base, "cuda")
    assert on_cuda["noise_device"] == "cuda"
    assert sampling.image_defining_flags(on_cuda, "sha")["noise_device"] == "cuda"
    for flags in (sampling.validate_flags(base, "cpu"), sampling.validate_flags(dict(base, noise_device="cpu"), "cuda")):
        assert flags["noise_device"] == "cpu" and "noise_device" not in sampling.image_defining_flags(flags, "sha")
    # --noise_threads prefetches CPU noise: alone it picks it, with device noise it is an error.
    assert sampling.validate_flags(dict(base, noise_threads=2), "cuda")["noise_device"] == "cpu"
    with pytest.raises(ValueError, match="--noise_threads"):
        sampling.validate_flags(dict(base, noise_threads=2, noise_device="device"), "cuda")


def test_noise_source_factory_picks_the_device_source_only_off_the_cpu():
    assert fast_paths.noise_source_factory(FastPathOptions(), CPU, "cpu") is IndexedNoise
    assert isinstance(fast_paths.noise_source_factory(FastPathOptions(), CPU, "device")(0, [0]), IndexedNoise)
    with pytest.raises(ValueError, match="--noise_threads"):
        fast_paths.noise_source_factory(FastPathOptions(noise_threads=2), torch.device("cuda"), "cuda")
