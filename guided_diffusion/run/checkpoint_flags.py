"""The flags a checkpoint was trained with, as its manifest records them, against the flags given now.

Sampling takes the model and diffusion flags of the manifest beside --model_path
as its defaults, so a checkpoint samples without its architecture flags; a flag
given (on the command line or in --config) that contradicts the manifest is
refused in one line. A resumed training run says when its loss weighting is not
the checkpoint's.
"""

import blobfile as bf

from .. import weighting
from . import checkpoint
from ..script_util import model_and_diffusion_defaults

# Model and diffusion flags that are choices of the sampling run, not facts about the checkpoint.
SAMPLING_CHOICES = ("timestep_respacing", "use_fp16")
# Training-only flags that change nothing in sampling: given differently, they are not a contradiction.
NOT_COMPARED = ("use_checkpoint", "dropout")


def manifest_model_flags(manifest):
    """The model and diffusion flags the manifest records, less the sampling choices; {} without a manifest."""
    recorded = (manifest or {}).get("flags") or {}
    keys = set(model_and_diffusion_defaults()) - set(SAMPLING_CHOICES)
    return {key: value for key, value in recorded.items() if key in keys}


def _same(given, recorded):
    if isinstance(given, bool) or isinstance(recorded, bool):
        return given is recorded
    if isinstance(given, (int, float)) and isinstance(recorded, (int, float)):
        return float(given) == float(recorded)
    return str(given) == str(recorded)


def flags_with_manifest(flags, given, manifest, source):
    """`flags` with the manifest's model and diffusion flags where none was given.

    `given` names the flags set on the command line or in --config; one of them
    that contradicts the manifest raises ValueError naming `source` (the manifest).
    """
    recorded = manifest_model_flags(manifest)
    contradictions = [
        f"--{key} {flags[key]} (trained with {recorded[key]})"
        for key in sorted(recorded)
        if key in given and key not in NOT_COMPARED and not _same(flags[key], recorded[key])
    ]
    if contradictions:
        raise ValueError(
            f"{'; '.join(contradictions)}: the checkpoint's manifest {source} says otherwise; "
            "drop the flag to use the trained value"
        )
    return {**flags, **{key: value for key, value in recorded.items() if key not in given}}


def weighting_change(recorded_flags, flags):
    """The line saying that a resumed run trains another weighting than its checkpoint did, or None.

    Compared: the schedule, its weight space and, when the schedule is the same, its parameters.
    """
    recorded_flags = recorded_flags or {}
    keys = ["weight_schedule", "weight_space"]
    if recorded_flags.get("weight_schedule") == flags["weight_schedule"]:
        keys += list(weighting.schedule_parameters(flags["weight_schedule"]))
    changed = [key for key in keys if key in recorded_flags and not _same(recorded_flags[key], flags[key])]
    if not changed:
        return None
    return "resuming with another loss weighting than the checkpoint was trained with: " + ", ".join(
        f"--{key} {flags[key]} (checkpoint: {recorded_flags[key]})" for key in changed
    )


def sampling_flags(flags, given):
    """The flags of a sampling command line, completed from the manifest beside --model_path when there is one.

    A schedule parameter given without its schedule is refused as in training.
    """
    model_path = flags.get("model_path") or ""
    step = checkpoint.step_of_checkpoint_file(model_path) if model_path else None
    manifest = checkpoint.manifest_beside(model_path) if step is not None else None
    if manifest is not None:
        source = bf.join(bf.dirname(model_path), checkpoint.manifest_filename(step))
        flags = flags_with_manifest(flags, given, manifest, source)
        unhealthy = checkpoint.marked_diverged(manifest)
        if unhealthy and not flags.get("allow_unhealthy"):
            raise ValueError(f"--model_path {model_path}: {source} marks this checkpoint set unhealthy ({unhealthy}); "
                             "sample a healthy checkpoint, or pass --allow_unhealthy True to sample it anyway")
    weighting.check_given_parameters(flags["weight_schedule"], given)
    return flags


# Flags of training that a resume may change freely: memory/speed choices, and the weighting, which
# `weighting_change` reports in its own line (the paper's study resumes across weightings on purpose).
RESUME_MAY_CHANGE = ("use_checkpoint", "dropout", "use_fp16", "weight_schedule", "weight_space")


def objective_flags():
    """The model and diffusion flags that define the network or the objective: a resume must keep them."""
    free = set(RESUME_MAY_CHANGE) | set(weighting.parameter_defaults())
    return sorted(key for key in model_and_diffusion_defaults() if key not in free)


def parse_allowed_changes(value):
    """The flag names of --allow_changed_flags (comma list, dashes optional), each one a resume compares."""
    names = [name.strip().lstrip("-") for name in str(value or "").split(",") if name.strip()]
    known = objective_flags()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"--allow_changed_flags {value}: {', '.join(unknown)} is not a flag that a resume compares; "
            f"expected a comma list of: {', '.join(known)}"
        )
    return set(names)


def resume_flag_changes(recorded_flags, flags, allowed, source):
    """The [{flag, from, to}] by which `flags` differ from a checkpoint's `recorded_flags` in the network or objective.

    A change not named in `allowed` raises ValueError: a resume that silently trains another objective or
    network (or fails on mis-shaped weights) would mix two experiments in one run. `source` names the manifest.
    """
    recorded_flags = recorded_flags or {}
    changes = [
        dict(flag=key, **{"from": recorded_flags[key], "to": flags[key]})
        for key in objective_flags()
        if key in recorded_flags and key in flags and not _same(flags[key], recorded_flags[key])
        # The class count of an unconditional model is never read.
        and not (key == "num_classes" and not flags.get("class_cond") and not recorded_flags.get("class_cond"))
    ]
    refused = [change for change in changes if change["flag"] not in allowed]
    if refused:
        listed = "; ".join(f"--{c['flag']} {c['to']} (checkpoint: {c['from']})" for c in refused)
        names = ",".join(c["flag"] for c in refused)
        raise ValueError(
            f"resume changes the network or objective: {listed}, against the manifest {source}; give the "
            f"checkpoint's value, or pass --allow_changed_flags {names} to fine-tune with the change"
        )
    return changes
