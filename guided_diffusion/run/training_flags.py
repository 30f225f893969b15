"""The valid values of the training run's numeric flags, checked in one place before a log dir is claimed.

Each flag names what it accepts, so a refusal is the flag, its value and the range (the
messages torch, numpy or the data loader would give instead name no flag: "Invalid learning
rate: -0.001", "Seed must be between 0 and 2**32 - 1"). Only the flags present in the mapping
are checked, so TrainLoop, which takes a subset under the same names, uses the same table.
"""

import math

SEED_LIMIT = 2**32  # numpy's and torch's seeds are 32-bit unsigned


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# flag: (accepts(value, flags), what it accepts)
RANGES = {
    "batch_size": (lambda v, f: v >= 1, "at least 1"),
    "microbatch": (lambda v, f: v in (-1, 0) or 1 <= v <= f.get("batch_size", v),
                   "-1 or 0 (ADM's: the whole batch at once), or from 1 to --batch_size"),
    "lr": (lambda v, f: _finite(v) and v > 0, "a finite number above 0"),
    "weight_decay": (lambda v, f: _finite(v) and v >= 0, "a finite number, 0 or above"),
    "fp16_scale_growth": (lambda v, f: _finite(v) and v > 0, "a finite number above 0"),
    "log_interval": (lambda v, f: v >= 1, "at least 1"),
    "save_interval": (lambda v, f: v >= 1, "at least 1"),
    "max_steps": (lambda v, f: v >= 0, "0 (no limit) or positive"),
    "lr_anneal_steps": (lambda v, f: v >= 0, "0 (no limit) or positive"),
    "num_workers": (lambda v, f: v >= 0, "0 (load in the training process) or positive"),
    "seed": (lambda v, f: v is None or 0 <= v < SEED_LIMIT, f"from 0 to {SEED_LIMIT - 1}"),
}


def check_training_flag_values(flags):
    """Raise ValueError naming the first flag of `flags` whose value is outside its range."""
    for name, (accepts, expected) in RANGES.items():
        if name in flags and not accepts(flags[name], flags):
            raise ValueError(f"--{name} {flags[name]}: expected {expected}")
