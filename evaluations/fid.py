"""Evaluate samples against a reference: FID and sFID, on request IS, KID and precision/recall; record the result.

    python -m evaluations.fid --ref refs/ffhq256.npz \
        --samples samples/ffhq/debias/T100/samples_50000x256x256x3.npz [--is] [--kid] [--prc]

`--ref` is a statistics npz (mu, sigma: ours or ADM's VIRTUAL_*.npz) or
images in any form `--samples` accepts (their statistics are cached).
`--samples` is an ADM sample npz, a folder of sample batches or an image
folder. Each run appends one line to the results registry; fields not given
as flags are taken from the run record that sampling wrote beside the samples
(`sampling.json`), then from ADM's defaults (eps prediction, DDPM sampler).
`--metrics_out` writes the same record as JSON. An evaluation that fails records
nothing: the outputs are checked to be writable before the work starts.

A metric that cannot be computed while the others can does not sink the
evaluation: the others are recorded, and the record's `missing` maps the
metric to the reason (`{"is": "no logits layer in the Inception weights ..."}`
with the offline weights; `{"sfid": ...}` against reference statistics written
before sFID was recorded). sFID is ADM's spatial FID (evaluations.inception).

Samples whose resolution differs from the reference's are refused (Inception
resizes both to 299, so such an FID measures the resizing), unless
`--allow_resolution_mismatch`; reference statistics that do not record their
resolution (older files, ADM's) are accepted with a warning. Features are computed in float32
with TF32 off on every device; reference statistics record the device they were computed on
(`feature_arithmetic`), and a reference from another device than the samples' features gets one
warning line (not a refusal: with TF32 off the devices' features differ by float32 rounding).
"""

import argparse
import contextlib
import datetime
import json
import logging
import os
import sys

from guided_diffusion.run import job
from guided_diffusion.run.atomic import atomic_write_text, check_writable
from guided_diffusion.targets import TARGETS

from .errors import EvaluationError
from .feature_metrics import inception_score, kernel_inception_distance, kid_subset_size, precision_recall
from .features import DEFAULT_BATCH_SIZE, extract_features, feature_statistics
from .frechet import bootstrap_frechet_distance, frechet_distance, gaussian_statistics
from .inception import LOGITS, POOL_FEATURES, SPATIAL_FEATURES, WEIGHTS_ENV, InceptionFeatures
from .ref_stats import (
    arithmetic_mismatch,
    default_statistics_cache_dir,
    holds_statistics,
    load_features,
    reference_feature_statistics,
    statistics_image_size,
)
from .registry import ADM_DEFAULTS, DEFAULT_RESULTS, append_result
from .run_metadata import fields_from_run_files, unhealthy_checkpoint
from .sources import open_image_source
from guided_diffusion.run.command_line import ArgumentParser


log = logging.getLogger(__name__)

RUN_FIELDS = ("dataset", "weight_schedule", "pred", "schedule_sampler", "train_seed", "iterations", "sampler", "steps",
              "checkpoint_hash")


def evaluate(
    samples,
    ref,
    *,
    inception_weights=None,
    batch_size=DEFAULT_BATCH_SIZE,
    device=None,
    with_inception_score=False,
    with_kid=False,
    with_precision_recall=False,
    bootstrap=0,
    cache_dir=None,
    progress=True,
    allow_resolution_mismatch=False,
):
    """Metrics of `samples` against `ref`: dict with fid, sfid, num_samples, is/kid/precision/recall/fid_std
    (None if not asked) and `missing`, {metric: why it could not be computed}.

    KID and precision/recall need reference features: a `--ref` written by
    `ref_stats --features` holds them, otherwise `ref` must be images. With
    `bootstrap` B > 1, `fid_std` is the standard deviation of the FID over B
    resamples of the samples (the uncertainty from their finite number).
    """
    if batch_size < 1:
        raise EvaluationError(f"--batch_size must be positive, got {batch_size}")
    needs_reference_features = with_kid or with_precision_recall
    reference_features = load_features(ref) if needs_reference_features else None
    if needs_reference_features and reference_features is None and holds_statistics(ref):
        raise EvaluationError(
            f"--kid/--prc compare two feature sets, but --ref {ref!r} holds only mu/sigma; pass reference images "
            "or statistics written by `evaluations.ref_stats --features`"
        )
    source = open_image_source(samples)
    unchecked_resolution = check_resolution(source, samples, ref, allow_resolution_mismatch)
    built = []

    def network():
        # Built on first use: bad samples or reference statistics fail before Inception loads.
        if not built:
            built.append(InceptionFeatures(
                inception_weights, device=device, with_logits=with_inception_score, require_logits=False
            ))
        return built[0]

    if needs_reference_features and reference_features is None:
        extracted = extract_features(ref, network(), batch_size, progress, desc="reference")
        reference_features = extracted[POOL_FEATURES]
        ref_statistics = {name: gaussian_statistics(extracted[name]) for name in (POOL_FEATURES, SPATIAL_FEATURES)}
    else:
        ref_statistics = reference_feature_statistics(ref, network, batch_size, cache_dir, progress)
    ref_mu, ref_sigma = ref_statistics[POOL_FEATURES]
    inception = network()
    mixed_arithmetic = arithmetic_mismatch(ref, inception)

    metrics = {"is": None, "is_std": None, "kid": None, "kid_std": None, "precision": None, "recall": None,
               "fid_std": None, "sfid": None, "missing": {}}
    if with_inception_score and inception.logits_missing:
        metrics["missing"]["is"] = inception.logits_missing
        log.warning("Inception Score not computed: %s", inception.logits_missing)
    if with_inception_score or needs_reference_features or bootstrap:
        features = extract_features(source, inception, batch_size, progress, desc="samples")
        pool = features[POOL_FEATURES]
        statistics = {name: gaussian_statistics(features[name]) for name in (POOL_FEATURES, SPATIAL_FEATURES)}
        count = pool.shape[0]
        if with_inception_score and LOGITS in features:
            try:
                metrics["is"], metrics["is_std"] = inception_score(features[LOGITS])
            except EvaluationError as err:  # too few samples for its splits: the other metrics still stand
                metrics["missing"]["is"] = str(err)
                log.warning("Inception Score not computed: %s", err)
        if with_kid:
            subset_size = kid_subset_size(len(pool), len(reference_features))
            metrics["kid"], metrics["kid_std"] = kernel_inception_distance(pool, reference_features, subset_size=subset_size)
        if with_precision_recall:
            metrics["precision"], metrics["recall"] = precision_recall(pool, reference_features)
        if bootstrap:
            metrics["fid_std"] = float(bootstrap_frechet_distance(pool, ref_mu, ref_sigma, bootstrap).std(ddof=1))
    else:
        statistics, count = feature_statistics(source, inception, batch_size, progress, desc="samples")
    metrics["fid"] = frechet_distance(*statistics[POOL_FEATURES], ref_mu, ref_sigma)
    if SPATIAL_FEATURES in ref_statistics:
        metrics["sfid"] = frechet_distance(*statistics[SPATIAL_FEATURES], *ref_statistics[SPATIAL_FEATURES])
    else:
        metrics["missing"]["sfid"] = (
            f"reference {os.path.basename(ref)} holds no spatial statistics (mu_s, sigma_s); "
            "rewrite it with evaluations.ref_stats"
        )
        log.warning("sFID not computed: %s", metrics["missing"]["sfid"])
    metrics["num_samples"] = count
    metrics["inception_weights"] = inception.weights_path
    for note in (unchecked_resolution, mixed_arithmetic):
        if note:  # last, so that a failure after it still ends in its one line
            log.warning(note)
    return metrics


def _size_text(size):
    return f"{size[0]}x{size[1]}"


def check_resolution(source, samples, ref, allowed):
    """Refuse samples of another resolution than the reference; returns the warning for a reference that does
    not record its resolution (None otherwise)."""
    sample_size = tuple(source.image_shape[:2])
    if holds_statistics(ref):
        ref_size = statistics_image_size(ref)
        if ref_size is None:
            return (f"reference {ref!r} does not record the resolution of its images (written before ref_stats "
                    f"recorded it, or ADM's): the samples' {_size_text(sample_size)} was not checked against it")
        what = f"holds statistics of {_size_text(ref_size)} images"
    else:
        try:
            ref_size = tuple(open_image_source(ref).image_shape[:2])
        except EvaluationError:
            return None  # not images either: the reference's own loading says why, in its one line
        what = f"holds {_size_text(ref_size)} images"
    if ref_size != sample_size and not allowed:
        raise EvaluationError(
            f"--samples {samples!r} are {_size_text(sample_size)} images but --ref {ref!r} {what}: Inception resizes "
            "both to 299, so that FID measures the resizing; sample at the reference's resolution, or pass "
            "--allow_resolution_mismatch"
        )
    return None


def run_fields(samples, given):
    """Registry fields of the run: flags in `given` win over the run's files, which win over ADM's defaults."""
    fields = dict.fromkeys(RUN_FIELDS)
    fields.update(ADM_DEFAULTS)
    fields.update(fields_from_run_files(samples))
    fields.update({key: value for key, value in given.items() if value is not None})
    return fields


def registry_record(samples, ref, metrics, fields, date=None):
    date = date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "dataset": fields["dataset"],
        "weight_schedule": fields["weight_schedule"],
        "pred": fields["pred"],
        "schedule_sampler": fields["schedule_sampler"],
        "train_seed": fields["train_seed"],
        "iterations": fields["iterations"],
        "sampler": fields["sampler"],
        "steps": fields["steps"],
        "num_samples": metrics["num_samples"],
        "fid": metrics["fid"],
        "fid_std": metrics["fid_std"],
        "sfid": metrics["sfid"],
        "is": metrics["is"],
        "is_std": metrics["is_std"],
        "kid": metrics["kid"],
        "kid_std": metrics["kid_std"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "checkpoint_hash": fields["checkpoint_hash"],
        "date": date,
        "samples": samples,
        "ref": ref,
        "inception_weights": metrics["inception_weights"],
        "missing": dict(metrics["missing"]),
    }


def format_metrics(metrics):
    spread = f" +- {metrics['fid_std']:.4f} (bootstrap)" if metrics["fid_std"] is not None else ""
    lines = [f"FID: {metrics['fid']:.4f}{spread}  ({metrics['num_samples']} samples)"]
    if metrics["sfid"] is not None:
        lines.append(f"sFID: {metrics['sfid']:.4f}")
    if metrics["is"] is not None:
        lines.append(f"Inception Score: {metrics['is']:.4f} +- {metrics['is_std']:.4f}")
    if metrics["kid"] is not None:
        lines.append(f"KID: {metrics['kid']:.6f} +- {metrics['kid_std']:.6f}")
    if metrics["precision"] is not None:
        lines.append(f"Precision: {metrics['precision']:.4f}")
        lines.append(f"Recall: {metrics['recall']:.4f}")
    lines += [f"{name} not computed: {reason}" for name, reason in sorted(metrics["missing"].items())]
    return "\n".join(lines)


def build_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="statistics npz (mu, sigma) or reference images")
    parser.add_argument("--samples", required=True, help="ADM samples npz, sample-batch folder or image folder")
    parser.add_argument(
        "--inception_weights", default=None,
        help=f"torch-fidelity Inception state dict (default: ${WEIGHTS_ENV}, then the torch hub cache)",
    )
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--is", dest="inception_score", action="store_true", help="also the Inception Score")
    parser.add_argument("--kid", action="store_true", help="also KID (needs reference images or ref_stats --features)")
    parser.add_argument("--prc", action="store_true", help="also precision/recall (needs reference images)")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="B",
        help="also the FID's standard deviation over B resamples of the samples (0: off)",
    )
    parser.add_argument("--cache_dir", default=default_statistics_cache_dir(), help="reference statistics cache")
    parser.add_argument(
        "--allow_resolution_mismatch", action="store_true",
        help="evaluate samples whose resolution differs from the reference's (refused by default)",
    )
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="results registry ('' records nothing)")
    parser.add_argument("--metrics_out", default=None, help="also write this run's record as a JSON file")
    registry = parser.add_argument_group("registry fields (default: from the sampling JSON beside the samples)")
    registry.add_argument("--dataset", default=None)
    registry.add_argument("--weight_schedule", default=None)
    registry.add_argument("--pred", default=None, choices=TARGETS, help="prediction target")
    registry.add_argument("--schedule_sampler", default=None, help="training's timestep sampler (uniform: ADM's)")
    registry.add_argument("--train_seed", type=int, default=None, help="training's --seed (default 0)")
    registry.add_argument("--iterations", type=int, default=None, help="training iterations of the checkpoint")
    registry.add_argument("--sampler", default=None)
    registry.add_argument("--steps", type=int, default=None, help="sampling steps")
    registry.add_argument("--checkpoint_hash", default=None)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return job.run_main(lambda: evaluate_and_record(args), prog=None, exit_code=2)


# Registry fields given as flags: (the least value, what it counts).
FIELD_MINIMA = {"train_seed": (0, "a training seed"), "iterations": (0, "training iterations"),
                "steps": (1, "sampling steps")}


def check_flag_values(args):
    if args.bootstrap != 0 and args.bootstrap < 2:
        raise EvaluationError(f"--bootstrap {args.bootstrap}: expected 0 (none) or at least 2 replicates")
    if args.batch_size < 1:
        raise EvaluationError(f"--batch_size {args.batch_size}: expected at least 1")
    for name, (least, what) in FIELD_MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise EvaluationError(f"--{name} {value}: expected {what}, {least} or more")


def check_command_line(argv):
    """Raise EvaluationError for a flag value the evaluation would refuse; reads no file (the plan check asks it)."""
    check_flag_values(build_parser().parse_args(argv))


def evaluate_and_record(args):
    """Evaluate, print, then write --metrics_out and append to --results; a failure leaves neither."""
    check_flag_values(args)
    for flag, path in (("--metrics_out", args.metrics_out), ("--results", args.results)):
        if path:
            check_writable(path, flag)
    unhealthy = unhealthy_checkpoint(args.samples)
    if unhealthy:
        log.warning("warning: --samples %s come from a checkpoint its training manifest marks unhealthy (%s); "
                    "their metrics describe a diverged run", args.samples, unhealthy)
    metrics = evaluate(
        args.samples,
        args.ref,
        inception_weights=args.inception_weights,
        batch_size=args.batch_size,
        device=args.device,
        with_inception_score=args.inception_score,
        with_kid=args.kid,
        with_precision_recall=args.prc,
        bootstrap=args.bootstrap,
        cache_dir=args.cache_dir or None,
        allow_resolution_mismatch=args.allow_resolution_mismatch,
    )
    print(format_metrics(metrics))
    fields = run_fields(args.samples, {key: getattr(args, key) for key in RUN_FIELDS})
    record = registry_record(args.samples, args.ref, metrics, fields)
    if args.metrics_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_out)), exist_ok=True)
        atomic_write_text(args.metrics_out, json.dumps(record, indent=2) + "\n")
    if args.results:
        try:
            append_result(args.results, record)
        except BaseException:
            if args.metrics_out:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(args.metrics_out)
            raise
        print(f"recorded in {args.results}")


if __name__ == "__main__":
    sys.exit(main())
