"""Noise that depends only on (seed, sample index), whatever the batch or world size."""

import numpy as np
import torch as th


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
        return th.stack(rows).to(device=x.device, dtype=x.dtype)
