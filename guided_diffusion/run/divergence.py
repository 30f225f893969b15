"""Whether a training run is still healthy at a save, recorded in the manifest as `health`.

A step whose loss or gradient is not finite is skipped (train_util), so a run that
diverges keeps its last finite parameters and would go on saving sets of them that
every later step also skips: with `--keep_checkpoints` those would push the last
healthy set out, and `--resume_checkpoint auto` would pick them. So each manifest
records the updates skipped since the previous save and whether the parameters are
finite. The health rule: a set is unhealthy (marked diverged) when its parameters
are not all finite, or when more than --max_skipped_fraction (default 0.5) of the
updates since the previous save were skipped, and at least `DIVERGED_SKIPS` of them
(fp16's loss-scale search skips ~20 at its start); the manifest records the rule.
When every update since the previous save was skipped, the previous set counts as diverged too, as its own parameters
gave the non-finite losses. `auto` passes over such sets, and retention keeps the
newest set that is not one. The run
stops, before it writes anything, when the set it is about to save is diverged
and its parameters are not finite or `STOP_SKIPS` updates in a row were skipped:
the one line names the last healthy step.
"""

import blobfile as bf
import torch

from .checkpoint import manifest_filename, newest_healthy_step

# fp16 starts its loss scale at 2^20 and halves it per overflow, so ~20 skips in a row are its normal start.
DIVERGED_SKIPS = {"fp16": 22}
STOP_SKIPS = {"fp16": 24}
DEFAULT_DIVERGED_SKIPS = 2
DEFAULT_STOP_SKIPS = 4


DEFAULT_MAX_SKIPPED_FRACTION = 0.5


def health_flag_defaults():
    return dict(max_skipped_fraction=DEFAULT_MAX_SKIPPED_FRACTION)


def health_rule(fraction):
    return (f"unhealthy when the parameters are not all finite or more than {fraction:g} of the updates since the "
            f"previous save were skipped for a non-finite loss or gradient (--max_skipped_fraction {fraction:g})")


class DivergenceWatch:
    """Counts the updates of one process since the last save; every rank counts the same (the skip is agreed).

    `flags` are the training flags (their --max_skipped_fraction; the default without them).
    """

    def __init__(self, precision, flags=None):
        self.precision = precision
        self.max_skipped_fraction = float((flags or {}).get("max_skipped_fraction", DEFAULT_MAX_SKIPPED_FRACTION))
        if not 0.0 <= self.max_skipped_fraction < 1.0:
            raise ValueError(f"--max_skipped_fraction {self.max_skipped_fraction:g}: expected a fraction in [0, 1)")
        self.last_health = None
        self.steps_since_save = 0
        self.skipped_since_save = 0
        self.consecutive_skipped = 0

    def step_done(self, took_step):
        self.steps_since_save += 1
        if took_step:
            self.consecutive_skipped = 0
        else:
            self.consecutive_skipped += 1
            self.skipped_since_save += 1

    def health(self, params, step):
        """The manifest's `health` of a set saved at `step` with `params`."""
        params_finite = all(bool(torch.isfinite(p).all()) for p in params)
        skipped, since = self.skipped_since_save, self.steps_since_save
        too_many = (since > 0 and skipped > self.max_skipped_fraction * since
                    and skipped >= DIVERGED_SKIPS.get(self.precision, DEFAULT_DIVERGED_SKIPS))
        reason = None
        if not params_finite:
            reason = "the parameters are not all finite"
        elif too_many:
            reason = (f"{skipped} of the {since} updates since step {step - since} were skipped for a non-finite "
                      f"loss or gradient (more than --max_skipped_fraction {self.max_skipped_fraction:g})")
        self.last_health = dict(
            healthy=reason is None,
            reason=reason,
            rule=health_rule(self.max_skipped_fraction),
            params_finite=params_finite,
            steps_since_last_save=self.steps_since_save,
            skipped_updates=self.skipped_since_save,
            consecutive_skipped=self.consecutive_skipped,
            step=step,
        )
        return self.last_health

    def ending_line(self, log_dir):
        """The line a run must end with, non-zero, when its last saved set is unhealthy; None when it is healthy."""
        health = self.last_health
        if health is None or health["healthy"]:
            return None
        step = health["step"]
        return (f"the last checkpoint set (step {step}, {bf.join(log_dir, manifest_filename(step))}) is unhealthy: "
                f"{health['reason']}; {self.last_healthy_text(log_dir, step + 1)}")

    def last_healthy_text(self, log_dir, step):
        """Where to go back to; sets that every later update skipped count as diverged too (checkpoint.diverged_sets).

        Read from the log dir, which rank 0 writes: other ranks may not see it, and say less.
        """
        since = self.steps_since_save
        implicated = since > 0 and self.skipped_since_save == since
        healthy = newest_healthy_step(log_dir, before=step - since if implicated else step)
        if healthy is None:
            return "no healthy checkpoint is in the log dir; lower --lr and start afresh"
        path = bf.join(log_dir, manifest_filename(healthy))
        return (f"the last healthy checkpoint is step {healthy} ({path}); lower --lr and resume "
                "from it (--resume_checkpoint auto picks it)")

    def stop_reason(self, health, step, log_dir):
        """The line to stop with instead of saving `health`'s set at `step`, or None to save it."""
        if health["healthy"]:
            return None
        if health["params_finite"] and self.consecutive_skipped < STOP_SKIPS.get(self.precision, DEFAULT_STOP_SKIPS):
            return None
        why = ("its parameters are not all finite" if not health["params_finite"] else
               f"the last {self.consecutive_skipped} updates were all skipped for a non-finite loss or gradient")
        return (f"training diverged at step {step}: {why}; nothing was saved for step {step}; "
                + self.last_healthy_text(log_dir, step))

    def saved(self):
        self.steps_since_save = 0
        self.skipped_since_save = 0
