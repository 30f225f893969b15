"""Checkpoint files in ADM's layout, their manifest, finding the one to resume, and strict loading.

A checkpoint at step S in a log dir is ADM's three files plus a manifest written last:

    model{S:06d}.pt          plain model state_dict (float32), loadable by ADM
    ema_{rate}_{S:06d}.pt    plain state_dict of the EMA weights, one per rate
    opt{S:06d}.pt            optimizer state_dict
    checkpoint{S:06d}.json   step, samples seen, flags, world size, package version,
                             loss scale, schedule-sampler state, and the files above

Every file is written atomically, and the manifest only after the others, so a set is
complete exactly when its manifest exists and names files that all exist.
`load_model_checkpoint(model, path_or_state_dict)` loads ours or any ADM state dict
strictly, failing with one line that lists the missing, unexpected and mis-shaped keys.
"""

import dataclasses
import hashlib
import io
import json
import re
import time

import blobfile as bf
import torch

from . import __version__
from .atomic import atomic_torch_save, atomic_write_text

MANIFEST_FORMAT = "debias-adm-checkpoint"
_MANIFEST_RE = re.compile(r"^checkpoint(\d+)\.json$")
_MODEL_RE = re.compile(r"^model(\d+)\.pt$")
_STEP_RE = re.compile(r"^(?:model|opt|ema_[0-9.eE+-]+_)(\d+)\.pt$")
# Long key lists are cut so that the error stays one readable line.
_MAX_KEYS_SHOWN = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit."""


class CheckpointMismatchError(CheckpointError):
    """A state dict whose keys or shapes differ from the model's."""


def model_filename(step):
    return f"model{step:06d}.pt"


def ema_filename(rate, step):
    return f"ema_{float(rate)}_{step:06d}.pt"


def opt_filename(step):
    return f"opt{step:06d}.pt"


def manifest_filename(step):
    return f"checkpoint{step:06d}.json"


def step_of_checkpoint_file(path):
    """The step in an ADM checkpoint name (`model012345.pt`, `ema_0.9999_012345.pt`), or None."""
    match = _STEP_RE.search(bf.basename(str(path)))
    return int(match.group(1)) if match else None


def manifest_beside(path):
    """The manifest of the checkpoint set a model or EMA file belongs to, or None when there is none."""
    step = step_of_checkpoint_file(path)
    if step is None:
        return None
    manifest_path = bf.join(bf.dirname(str(path)), manifest_filename(step))
    if not bf.exists(manifest_path):
        return None
    return _read_manifest(manifest_path)


def parse_resume_step_from_filename(path):
    """ADM's rule: `.../model012345.pt` resumes at step 12345; other names at step 0."""
    match = _MODEL_RE.match(bf.basename(path))
    return int(match.group(1)) if match else 0


def state_dict_digest(state_dict):
    """sha1 over the keys (sorted) and the raw bytes of their tensors."""
    digest = hashlib.sha1()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_checkpoint(path, map_location="cpu"):
    """torch.load of a local or blobfile path (tensors and plain containers only)."""
    try:
        with bf.BlobFile(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path}: no such file") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None


def _shown(keys):
    keys = list(keys)
    text = ", ".join(keys[:_MAX_KEYS_SHOWN])
    return text + (f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else "")


def check_state_dict(model, state_dict, source="checkpoint"):
    """Raise CheckpointMismatchError unless `state_dict` has exactly the model's keys and shapes."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors, got {type(state_dict).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_shown(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatch(es): {_shown(mis_shaped)}")
        raise CheckpointMismatchError(
            f"{source} does not fit the model (different architecture flags?): " + "; ".join(parts)
        )


def load_model_checkpoint(model, source, map_location="cpu"):
    """Load a model file (ours or ADM's) or a state dict into `model`, strictly; returns the model.

    Reads `source` in this process only (not a collective), so any rank may call it.
    """
    if isinstance(source, dict):
        state_dict, name = source, "state dict"
    else:
        state_dict, name = read_checkpoint(source, map_location=map_location), f"checkpoint {source}"
    check_state_dict(model, state_dict, name)
    model.load_state_dict(state_dict, strict=True)
    return model


def save_checkpoint(log_dir, step, *, model_state, ema_states, opt_state, manifest):
    """Write the checkpoint set for `step` into `log_dir`; `ema_states` maps rate -> state dict.

    `manifest` holds the caller's extra fields (flags, sampler state, ...); file names,
    step, format and package version are added here. Returns the manifest's path.
    """
    bf.makedirs(log_dir)
    files = {
        "model": model_filename(step),
        "ema": {str(float(rate)): ema_filename(rate, step) for rate in ema_states},
        "opt": opt_filename(step),
    }
    atomic_torch_save(model_state, bf.join(log_dir, files["model"]))
    for rate, state in ema_states.items():
        atomic_torch_save(state, bf.join(log_dir, files["ema"][str(float(rate))]))
    atomic_torch_save(opt_state, bf.join(log_dir, files["opt"]))
    record = dict(manifest)
    record.update(
        format=MANIFEST_FORMAT,
        step=step,
        package_version=__version__,
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        files=files,
    )
    path = bf.join(log_dir, manifest_filename(step))
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


@dataclasses.dataclass
class ResumePoint:
    """What to restore: the step, the model file, EMA files by rate, the optimizer file, the manifest."""

    step: int
    model_path: str
    ema_paths: dict
    opt_path: str | None
    manifest: dict | None


def _read_manifest(path):
    try:
        with bf.BlobFile(path, "r") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint manifest {path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return record


def _resume_point_from_manifest(path, record):
    directory = bf.dirname(path)
    files = record["files"]
    return ResumePoint(
        step=int(record["step"]),
        model_path=bf.join(directory, files["model"]),
        ema_paths={rate: bf.join(directory, name) for rate, name in files["ema"].items()},
        opt_path=bf.join(directory, files["opt"]),
        manifest=record,
    )


def _is_complete(point):
    paths = [point.model_path, point.opt_path, *point.ema_paths.values()]
    return all(bf.exists(p) for p in paths)


def find_latest_checkpoint(log_dir):
    """The newest complete checkpoint set in `log_dir`, or None if there is none."""
    if not bf.isdir(log_dir):
        return None
    steps = sorted(
        (int(m.group(1)), name) for name in bf.listdir(log_dir) if (m := _MANIFEST_RE.match(name))
    )
    for _, name in reversed(steps):
        path = bf.join(log_dir, name)
        try:
            point = _resume_point_from_manifest(path, _read_manifest(path))
        except (CheckpointError, KeyError, TypeError):
            continue
        if _is_complete(point):
            return point
    return None


def resolve_resume_checkpoint(resume_checkpoint, log_dir):
    """The ResumePoint for `--resume_checkpoint`, or None to start from scratch.

    "" starts fresh; "auto" takes the newest complete set in `log_dir` (fresh if none);
    a manifest path (`checkpoint*.json`) takes its set; any other path is a model file,
    ADM-style: the step comes from its name and EMA, optimizer and manifest files of that
    step beside it are used when present.
    """
    if not resume_checkpoint:
        return None
    if resume_checkpoint == "auto":
        return find_latest_checkpoint(log_dir)
    if not bf.exists(resume_checkpoint):
        raise FileNotFoundError(f"--resume_checkpoint {resume_checkpoint}: no such file")
    if _MANIFEST_RE.match(bf.basename(resume_checkpoint)):
        point = _resume_point_from_manifest(resume_checkpoint, _read_manifest(resume_checkpoint))
        missing = [p for p in [point.model_path, point.opt_path, *point.ema_paths.values()] if not bf.exists(p)]
        if missing:
            raise FileNotFoundError(f"--resume_checkpoint {resume_checkpoint}: incomplete set, missing {missing[0]}")
        return point
    step = parse_resume_step_from_filename(resume_checkpoint)
    if not _MODEL_RE.match(bf.basename(resume_checkpoint)):
        # Not an ADM-named file: nothing beside it can be attributed to it.
        return ResumePoint(step=0, model_path=resume_checkpoint, ema_paths={}, opt_path=None, manifest=None)
    directory = bf.dirname(resume_checkpoint)
    manifest_path = bf.join(directory, manifest_filename(step))
    manifest = _read_manifest(manifest_path) if bf.exists(manifest_path) else None
    ema_paths = {}
    for name in bf.listdir(directory):
        match = re.match(r"^ema_([0-9.eE+-]+)_(\d+)\.pt$", name)
        if match and int(match.group(2)) == step:
            ema_paths[str(float(match.group(1)))] = bf.join(directory, name)
    opt_path = bf.join(directory, opt_filename(step))
    return ResumePoint(
        step=step,
        model_path=resume_checkpoint,
        ema_paths=ema_paths,
        opt_path=opt_path if bf.exists(opt_path) else None,
        manifest=manifest,
    )
