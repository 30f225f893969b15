"""Noise that depends only on (seed, sample index), whatever the batch or world size.

Two sources with the same seeding, sample i's generator seeded by `sample_seed(seed, i)`:

- `IndexedNoise` draws on the CPU (torch's Mersenne Twister) and copies to the device:
  the same numbers on every machine, CPU or GPU (`--noise_device cpu`).
- `DeviceIndexedNoise` draws with a `torch.Generator` on the sampling device itself, so
  no host round trip sits between the model's steps (`--noise_device device`, the
  default on CUDA). It is still a function of (seed, i) alone, so the same for any batch
  size, world size or shard split *on that device type*. Across device types it is not:
  CUDA's generator is Philox, which gives other numbers than the CPU's Mersenne Twister
  for the same seed, so CUDA samples drawn this way differ from CPU-noise samples (and
  from a CPU run) in every image, by as much as two independent draws. On the CPU both
  sources give the same numbers.
"""

import numpy as np
import torch as th

from .run.host_sync import to_device

NOISE_DEVICES = ("cpu", "device")


def sample_seed(seed, index):
    """A 63-bit seed for sample `index` of a run seeded with `seed`, well mixed by SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class IndexedNoise:
    """Standard normal draws where row b always comes from the generator of `indices[b]`.

    Passed as `noise_source` to the sampling loops, it makes the initial noise
    and every step's noise of sample i a function of (seed, i) alone. The draws
    are made on the CPU, so they are the same on every device.
    """

    def __init__(self, seed, indices):
        self.indices = [int(i) for i in indices]
        self.generators = [th.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def randn_like(self, x):
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self.generators)} indices")
        rows = [th.randn(tuple(x.shape[1:]), generator=g) for g in self.generators]
        # Pinned and non-blocking: a blocking copy would wait for the GPU to finish the step before.
        return to_device(th.stack(rows), x.device).to(dtype=x.dtype)


class DeviceIndexedNoise:
    """`IndexedNoise` drawn by per-sample generators on `device` (see the module docstring).

    Rows are drawn in float32 and then cast, as `IndexedNoise` does, so that the
    numbers do not depend on the precision the model samples in.
    """

    def __init__(self, seed, indices, device):
        self.device = th.device(device)
        self.indices = [int(i) for i in indices]
        self.generators = [th.Generator(device=self.device).manual_seed(sample_seed(seed, i)) for i in self.indices]

    def randn_like(self, x):
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self.generators)} indices")
        out = th.empty(tuple(x.shape), device=self.device)
        for row, generator in zip(out, self.generators):
            th.randn(tuple(x.shape[1:]), generator=generator, device=self.device, out=row)
        return out.to(device=x.device, dtype=x.dtype, non_blocking=True)


def resolve_noise_device(value, device_type):
    """Where the noise of a run on `device_type` is drawn: "cpu" or the device type itself ("cuda").

    `value` is the flag: "cpu", "device", or "" (device on CUDA, cpu elsewhere). A device
    type is accepted as given, so resolving twice gives the same answer. On the CPU
    "device" is "cpu" (the same generator).
    """
    value = str(value or "").strip()
    if device_type is None:
        if value and value not in NOISE_DEVICES:
            raise ValueError(f"--noise_device {value!r}: expected {' or '.join(NOISE_DEVICES)}")
        return value
    if value == "":
        value = "device" if device_type == "cuda" else "cpu"
    if value == "device":
        value = device_type
    if value not in ("cpu", device_type):
        raise ValueError(f"--noise_device {value!r}: expected {' or '.join(NOISE_DEVICES)} (this run is on {device_type})")
    return value


def noise_source(seed, indices, noise_device, device):
    """The noise source of one batch: `IndexedNoise` for "cpu", else `DeviceIndexedNoise` on `device`."""
    if noise_device in ("", "cpu") or th.device(device).type == "cpu":
        return IndexedNoise(seed, indices)
    return DeviceIndexedNoise(seed, indices, device)
