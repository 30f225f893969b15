"""Registry fields of a sample set, read from the `sampling.json` that `scripts/image_sample.py` wrote beside it.

Sampling resolves the fields once (`guided_diffusion.sampling.run_record`: weighting and
iterations from the training manifest, prediction target, sampler, steps, checkpoint
hash) and stores them under "run"; evaluations read them as they are, so no rule for
parsing flags, respacings or file names exists twice. Samples from elsewhere (an ADM
npz without a sampling.json) get their fields from the evaluation's flags.
"""

import json
import logging
import os

from guided_diffusion.sampling import SUMMARY_FILE

log = logging.getLogger(__name__)


def sidecar_paths(samples_path):
    """Where the sampling.json of `samples_path` may be: beside an npz, in a sample dir or its parent."""
    samples_path = os.path.abspath(samples_path)
    if os.path.isdir(samples_path):
        return [os.path.join(samples_path, SUMMARY_FILE), os.path.join(os.path.dirname(samples_path), SUMMARY_FILE)]
    return [os.path.join(os.path.dirname(samples_path), SUMMARY_FILE)]


def _sampling_records(samples_path):
    """The readable sampling.json records found for `samples_path`, nearest first."""
    for candidate in sidecar_paths(samples_path):
        if not os.path.isfile(candidate):
            continue
        try:
            with open(candidate) as f:
                record = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("ignoring %s: %s", candidate, err)
            continue
        if isinstance(record, dict):
            yield record


def unhealthy_checkpoint(samples_path):
    """Why the checkpoint `samples_path` were drawn from is marked unhealthy (per its sampling.json), or None."""
    for record in _sampling_records(samples_path):
        return record.get("checkpoint_unhealthy")
    return None


def fields_from_run_files(samples_path):
    """The "run" record of the first readable sampling.json found for `samples_path`, or {}."""
    for record in _sampling_records(samples_path):
        run = record.get("run")
        if isinstance(run, dict):
            return {key: value for key, value in run.items() if value is not None}
    return {}
