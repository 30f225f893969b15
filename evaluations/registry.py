"""The results registry: one JSON object per line in results/results.jsonl, one line per evaluation.

Lines are only ever appended. An append rewrites the file through a temp file
and a rename under an exclusive lock, so concurrent evaluations neither lose
nor interleave lines and a crash leaves the previous file intact.
"""

import contextlib
import datetime
import fcntl
import json
import os

from guided_diffusion.run.atomic import atomic_write_text

from .errors import EvaluationError

DEFAULT_RESULTS = os.path.join("results", "results.jsonl")

# Every line carries these keys (null when unknown); tables select on the first eight.
RESULT_FIELDS = (
    "dataset",
    "weight_schedule",
    "pred",
    "schedule_sampler",
    "train_seed",
    "iterations",
    "sampler",
    "steps",
    "num_samples",
    "fid",
    "fid_std",
    "sfid",
    "is",
    "kid",
    "kid_std",
    "checkpoint_hash",
    "date",
    "samples",
)


# What identifies one evaluation cell; a cell evaluated again is represented by its latest record.
# The timestep sampler is part of a cell: a run with importance-sampled t is another model of the
# same weighting, and must not replace the uniform one's line.
# The training seed is part of a cell too: a second seed of a weighting is a second sample of it.
CELL_FIELDS = ("dataset", "weight_schedule", "pred", "schedule_sampler", "train_seed", "iterations", "sampler", "steps",
               "num_samples")

# ADM's choices, for records that leave a field null (lines written before a field existed included);
# a training seed left null is --seed's default.
ADM_DEFAULTS = {"pred": "eps", "sampler": "ddpm", "schedule_sampler": "uniform", "train_seed": 0}


@contextlib.contextmanager
def _locked(path):
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def append_result(path, record):
    """Append `record` (a dict with at least RESULT_FIELDS) as one JSON line to the registry at `path`."""
    missing = [field for field in RESULT_FIELDS if field not in record]
    if missing:
        raise EvaluationError(f"result record lacks fields {missing}")
    line = json.dumps(record, sort_keys=False, allow_nan=False) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with _locked(path):
        previous = ""
        if os.path.isfile(path):
            with open(path) as f:
                previous = f.read()
            if previous and not previous.endswith("\n"):
                previous += "\n"
        atomic_write_text(path, previous + line)


def read_results(path, missing_ok=False):
    """All records of the registry at `path`, in file order, each with its line number under '_line'.

    A registry that does not exist is an error, or no records with `missing_ok`.
    """
    if not os.path.isfile(path):
        if missing_ok:
            return []
        raise EvaluationError(f"results registry {path} does not exist")
    records = []
    with open(path) as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise EvaluationError(f"{path}:{number} is not valid JSON: {err.msg}") from None
            if not isinstance(record, dict):
                raise EvaluationError(f"{path}:{number} is not a JSON object")
            record["_line"] = number
            records.append(record)
    return records


def record_value(record, key):
    """A record's field, with ADM's default where the record leaves it null."""
    value = record.get(key)
    return ADM_DEFAULTS.get(key) if value is None else value


def recency(record):
    """Sort key: newer date first, and a later line for equal dates."""
    try:
        moment = datetime.datetime.fromisoformat(str(record.get("date")))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        moment = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return moment, record.get("_line", 0)


def latest(records, metric="fid", fields=CELL_FIELDS):
    """{cell: newest record} over the records that have `metric`; a cell is the tuple of `fields` (ADM defaults applied)."""
    newest = {}
    for record in records:
        if record.get(metric) is None:
            continue
        cell = tuple(record_value(record, field) for field in fields)
        if cell not in newest or recency(record) >= recency(newest[cell]):
            newest[cell] = record
    return newest
