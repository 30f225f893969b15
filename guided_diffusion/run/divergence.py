"""Whether a training run is still healthy at a save, recorded in the manifest as `health`.

A step whose loss or gradient is not finite is skipped (train_util), so a run that
diverges keeps its last finite parameters and would go on saving sets of them that
every later step also skips: with `--keep_checkpoints` those would push the last
healthy set out, and `--resume_checkpoint auto` would pick them. So each manifest
records the updates skipped since the previous save and whether the parameters are
finite. A set is marked diverged when its parameters are not all finite, or when
every update since the previous save was skipped and at least `DIVERGED_SKIPS` in
a row were; the previous set then counts as diverged too, as its own parameters
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


class DivergenceWatch:
    """Counts the updates of one process since the last save; every rank counts the same (the skip is agreed)."""

    def __init__(self, precision):
        self.precision = precision
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
        all_skipped = self.steps_since_save > 0 and self.skipped_since_save == self.steps_since_save
        reason = None
        if not params_finite:
            reason = "the parameters are not all finite"
        elif all_skipped and self.consecutive_skipped >= DIVERGED_SKIPS.get(self.precision, DEFAULT_DIVERGED_SKIPS):
            reason = (f"all {self.steps_since_save} updates since step {step - self.steps_since_save} were "
                      "skipped for a non-finite loss or gradient")
        return dict(
            healthy=reason is None,
            reason=reason,
            params_finite=params_finite,
            steps_since_last_save=self.steps_since_save,
            skipped_updates=self.skipped_since_save,
            consecutive_skipped=self.consecutive_skipped,
        )

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
