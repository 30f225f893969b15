"""Registry fields recovered from the files the sampling and training stages leave behind.

`scripts/image_sample.py` writes `<out_dir>/sampling.json` (flags, model_path,
checkpoint_sha256, seed, sampler, timestep_respacing) beside the merged npz
and the `batches/` folder. It tells how the samples were drawn: prediction
target, sampler, steps, checkpoint hash. The weighting is a training flag
that sampling does not need, so the sampling flags may hold a default for it;
it is taken only from the training checkpoint's manifest
(`checkpoint{step}.json` beside `model_path`), which also gives the
iteration count. ADM-named checkpoints without a manifest still give the
iteration count through their file name.
"""

import json
import logging
import os
import re

from guided_diffusion.checkpoint import MANIFEST_FORMAT, manifest_filename

log = logging.getLogger(__name__)

SAMPLING_JSON = "sampling.json"
# ADM names checkpoints model500000.pt, ema_0.9999_500000.pt, opt500000.pt.
_CHECKPOINT_STEP = re.compile(r"(\d+)\.pt$")


def sidecar_paths(samples_path):
    """Where a sampling JSON for `samples_path` may be: beside an npz, in a sample dir or its parent."""
    samples_path = os.path.abspath(samples_path)
    if os.path.isdir(samples_path):
        return [os.path.join(samples_path, SAMPLING_JSON), os.path.join(os.path.dirname(samples_path), SAMPLING_JSON)]
    directory = os.path.dirname(samples_path)
    return [os.path.splitext(samples_path)[0] + ".json", os.path.join(directory, SAMPLING_JSON)]


def _read_json_object(path):
    try:
        with open(path) as f:
            contents = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("ignoring %s: %s", path, err)
        return None
    if not isinstance(contents, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return None
    return contents


def read_sidecar(samples_path):
    """The first readable sampling JSON found for `samples_path`, or {}."""
    for candidate in sidecar_paths(samples_path):
        if os.path.isfile(candidate):
            contents = _read_json_object(candidate)
            if contents is not None:
                return contents
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


def prediction_target(flags):
    """eps, x0 or v from ADM's predict_xstart / our predict_v flags; None if neither flag is present."""
    if _truthy(flags.get("predict_v", False)):
        return "v"
    if _truthy(flags.get("predict_xstart", False)):
        return "x0"
    if "predict_v" in flags or "predict_xstart" in flags:
        return "eps"
    return None


def fields_from_sampling_json(summary):
    """Fields describing how the samples were drawn; absent ones are left out."""
    flags = dict(summary.get("flags") or {})
    merged = {**flags, **{k: v for k, v in summary.items() if k != "flags"}}
    fields = {}
    if merged.get("dataset"):
        fields["dataset"] = merged["dataset"]
    pred = prediction_target(merged)
    if pred is not None:
        fields["pred"] = pred
    if merged.get("sampler"):
        fields["sampler"] = merged["sampler"]
    elif "use_ddim" in merged:
        fields["sampler"] = "ddim" if _truthy(merged["use_ddim"]) else "ddpm"
    if merged.get("sampling_steps"):
        fields["steps"] = int(merged["sampling_steps"])
    elif "timestep_respacing" in merged or "diffusion_steps" in merged:
        steps = sampling_steps(merged.get("timestep_respacing"), merged.get("diffusion_steps", 1000))
        if steps is not None:
            fields["steps"] = steps
    iterations = checkpoint_iterations(merged.get("model_path"))
    if iterations is not None:
        fields["iterations"] = iterations
    checkpoint_hash = merged.get("checkpoint_sha256") or merged.get("checkpoint_hash")
    if checkpoint_hash:
        fields["checkpoint_hash"] = checkpoint_hash
    return fields


def read_checkpoint_manifest(model_path):
    """The training manifest of the checkpoint at `model_path`, or None when there is none."""
    step = checkpoint_iterations(model_path)
    if step is None:
        return None
    path = os.path.join(os.path.dirname(str(model_path)), manifest_filename(step))
    if not os.path.isfile(path):
        return None
    manifest = _read_json_object(path)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def fields_from_checkpoint_manifest(manifest):
    flags = dict(manifest.get("flags") or {})
    fields = {}
    if flags.get("weight_schedule"):
        fields["weight_schedule"] = flags["weight_schedule"]
    pred = prediction_target(flags)
    if pred is not None:
        fields["pred"] = pred
    if manifest.get("step") is not None:
        fields["iterations"] = int(manifest["step"])
    if flags.get("dataset"):
        fields["dataset"] = flags["dataset"]
    return fields


def fields_from_run_files(samples_path):
    """Registry fields known from the sampling JSON and the checkpoint manifest it points to."""
    summary = read_sidecar(samples_path)
    fields = {}
    manifest = read_checkpoint_manifest(summary.get("model_path") or (summary.get("flags") or {}).get("model_path"))
    if manifest is not None:
        fields.update(fields_from_checkpoint_manifest(manifest))
    fields.update(fields_from_sampling_json(summary))
    return fields
