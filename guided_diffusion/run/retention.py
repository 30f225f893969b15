"""Which checkpoint sets a run keeps: `--keep_checkpoints K` and `--keep_every M`.

A set is a step's model, EMA and optimizer files and its manifest (checkpoint.py). With
K = 0 (the default) every set is kept, as ADM does. Otherwise the newest K complete sets
are kept, plus every set whose step is a multiple of M (M = 0: none), every set newer
than the newest complete one (it may be in the making), and the newest complete set whose
manifest is not diverged (checkpoint.healthy_steps): after a divergence it is the one set worth resuming. The rest are deleted whole, files
first and manifest last: a deletion cut short leaves an incomplete set, which resuming
skips and the next pruning finishes. Files without a manifest (an ADM run's, say) are
never touched. Training prunes right after a new set is complete.
"""

import blobfile as bf

from .checkpoint import (
    _MANIFEST_RE,
    CheckpointError,
    _read_manifest,
    healthy_steps,
    read_manifests,
    step_of_checkpoint_file,
)


def check_retention_flags(keep_checkpoints, keep_every):
    for name, value in (("keep_checkpoints", keep_checkpoints), ("keep_every", keep_every)):
        if int(value) < 0:
            raise ValueError(f"--{name} must be 0 (keep all / none) or positive, got {value}")


def _complete(log_dir, name):
    """Whether the manifest `name` is readable and every file it names exists (no hashing: this runs at every save)."""
    try:
        files = _read_manifest(bf.join(log_dir, name))["files"]
        names = [files["model"], files["opt"], *files["ema"].values()]
    except (CheckpointError, KeyError, TypeError, AttributeError):
        return False
    return all(bf.exists(bf.join(log_dir, n)) for n in names)


def steps_to_delete(sets, keep_checkpoints, keep_every, healthy=None):
    """The steps to delete, from {step: complete?} of the sets with a manifest; `healthy` holds the steps whose
    manifest does not mark them diverged (None: all)."""
    if keep_checkpoints <= 0:
        return []
    complete = sorted(step for step, ok in sets.items() if ok)
    if not complete:
        return []
    keep = set(complete[-keep_checkpoints:])
    if keep_every > 0:
        keep |= {step for step in sets if step % keep_every == 0}
    sound = [step for step in complete if healthy is None or step in healthy]
    if sound:
        keep.add(sound[-1])
    return sorted(step for step in sets if step not in keep and step < complete[-1])


def prune_checkpoints(log_dir, keep_checkpoints, keep_every=0):
    """Delete the sets of `log_dir` that the retention flags do not keep; returns their steps."""
    if keep_checkpoints <= 0 or not bf.isdir(log_dir):
        return []
    names = list(bf.listdir(log_dir))
    sets = {int(m.group(1)): _complete(log_dir, name) for name in names if (m := _MANIFEST_RE.match(name))}
    healthy = set(healthy_steps(read_manifests(log_dir), [step for step, complete in sets.items() if complete]))
    doomed = steps_to_delete(sets, keep_checkpoints, keep_every, healthy)
    for step in doomed:
        manifests = [name for name in names if (m := _MANIFEST_RE.match(name)) and int(m.group(1)) == step]
        files = [name for name in names if step_of_checkpoint_file(name) == step]
        for name in files + manifests:
            if bf.exists(bf.join(log_dir, name)):
                bf.remove(bf.join(log_dir, name))
    return doomed
