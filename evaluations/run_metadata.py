"""Registry fields recovered from the JSON the sampling stage writes beside its samples.

`scripts/image_sample.py` leaves `<out_dir>/sampling.json` (flags, model_path,
checkpoint_sha256, seed, ...). An evaluation of `<out_dir>` or of an npz in
it fills the registry fields the user did not give on the command line from
that file; a `<name>.json` next to `<name>.npz` is read the same way.
"""

import json
import logging
import os
import re

log = logging.getLogger(__name__)

SAMPLING_JSON = "sampling.json"
# ADM names checkpoints model500000.pt, ema_0.9999_500000.pt, opt500000.pt.
_CHECKPOINT_STEP = re.compile(r"(\d+)\.pt$")


def sidecar_paths(samples_path):
    samples_path = os.path.abspath(samples_path)
    if os.path.isdir(samples_path):
        return [os.path.join(samples_path, SAMPLING_JSON)]
    directory = os.path.dirname(samples_path)
    return [os.path.splitext(samples_path)[0] + ".json", os.path.join(directory, SAMPLING_JSON)]


def read_sidecar(samples_path):
    """The first sidecar JSON object found for `samples_path`, or {} (unreadable files are skipped with a warning)."""
    for candidate in sidecar_paths(samples_path):
        if not os.path.isfile(candidate):
            continue
        try:
            with open(candidate) as f:
                contents = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring %s: %s", candidate, err)
            continue
        if isinstance(contents, dict):
            return contents
        log.warning("ignoring %s: not a JSON object", candidate)
    return {}


def _truthy(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(value)


def sampling_steps(timestep_respacing, diffusion_steps):
    """Number of sampling steps of ADM's `timestep_respacing` ("" = all, "250", "ddim50", "10,15,20")."""
    respacing = str(timestep_respacing or "").strip()
    if not respacing:
        return int(diffusion_steps) if diffusion_steps is not None else None
    if respacing.startswith("ddim"):
        respacing = respacing[len("ddim") :]
    try:
        return sum(int(part) for part in respacing.split(","))
    except ValueError:
        return None


def checkpoint_iterations(model_path):
    match = _CHECKPOINT_STEP.search(os.path.basename(str(model_path or "")))
    return int(match.group(1)) if match else None


def fields_from_sidecar(sidecar):
    """Registry fields derivable from a sampling JSON; absent ones are left out."""
    flags = dict(sidecar.get("flags") or sidecar.get("args") or {})
    merged = {**flags, **{k: v for k, v in sidecar.items() if k not in ("flags", "args")}}
    fields = {}
    if merged.get("dataset"):
        fields["dataset"] = merged["dataset"]
    if merged.get("weight_schedule"):
        fields["weight_schedule"] = merged["weight_schedule"]
    if _truthy(merged.get("predict_v", False)):
        fields["pred"] = "v"
    elif _truthy(merged.get("predict_xstart", False)):
        fields["pred"] = "x0"
    elif "predict_v" in merged or "predict_xstart" in merged:
        fields["pred"] = "eps"
    if merged.get("sampler"):
        fields["sampler"] = merged["sampler"]
    elif "use_ddim" in merged:
        fields["sampler"] = "ddim" if _truthy(merged["use_ddim"]) else "ddpm"
    if "timestep_respacing" in merged or "diffusion_steps" in merged:
        steps = sampling_steps(merged.get("timestep_respacing"), merged.get("diffusion_steps", 1000))
        if steps is not None:
            fields["steps"] = steps
    iterations = merged.get("iterations") or checkpoint_iterations(merged.get("model_path"))
    if iterations is not None:
        fields["iterations"] = int(iterations)
    checkpoint_hash = merged.get("checkpoint_sha256") or merged.get("checkpoint_hash")
    if checkpoint_hash:
        fields["checkpoint_hash"] = checkpoint_hash
    return fields
