"""Reference statistics: mu/sigma (float64) of the Inception pool features of a training set.

Written as an npz with ADM's reference-batch keys `mu` and `sigma` (pool
features, for FID) and `mu_s` and `sigma_s` (ADM's spatial features, for
sFID), so ADM's published `VIRTUAL_*.npz` reference batches and our files are
interchangeable as `--ref`. Files written before sFID was recorded hold no
`mu_s`/`sigma_s`: they still give the FID, and the sFID is recorded missing.
Ours also record `image_size` (height, width of the images) and
`feature_extractor` (the Inception weights' file name and size), so that
evaluations.fid can refuse samples of another resolution; files without them
(older ones, ADM's) are accepted with a warning.

Computing them over a folder takes a while, so results are cached under the
cache directory, keyed by the input's file names, sizes and modification times
and by the Inception weights: a second call with the same input is a file read.

    python -m evaluations.ref_stats <image folder | samples .npz | prepared dataset dir> <out.npz>
"""

import argparse
import hashlib
import logging
import os
import sys

import numpy as np

from guided_diffusion.run import job
from guided_diffusion.run.atomic import atomic_open, check_writable
from guided_diffusion.script_util import str2bool

from .convert_inception import default_cache_dir
from .errors import EvaluationError, MissingInputError
from .features import DEFAULT_BATCH_SIZE, extract_features, feature_statistics
from .frechet import gaussian_statistics
from .inception import POOL_FEATURES, SPATIAL_FEATURES, InceptionFeatures
from .sources import FirstImages, open_image_source
from guided_diffusion.run.command_line import ArgumentParser

log = logging.getLogger(__name__)

STATISTICS_KEYS = ("mu", "sigma")
SPATIAL_STATISTICS_KEYS = ("mu_s", "sigma_s")
# Which npz keys hold the statistics of which features.
KEYS_OF_FEATURES = {POOL_FEATURES: STATISTICS_KEYS, SPATIAL_FEATURES: SPATIAL_STATISTICS_KEYS}
FEATURES_KEY = "features"
IMAGE_SIZE_KEY = "image_size"
EXTRACTOR_KEY = "feature_extractor"
# The device and precision the features were computed with (InceptionFeatures.arithmetic), e.g. "cuda float32".
ARITHMETIC_KEY = "feature_arithmetic"


def default_statistics_cache_dir():
    return os.path.join(default_cache_dir(), "ref_stats")


def save_statistics(path, mu, sigma, num_images, features=None, spatial=None, image_size=None, extractor=None,
                    arithmetic=None):
    """mu, sigma (float64), the spatial (mu_s, sigma_s) when given, and the pool features (float32, N x D) that
    KID and bootstraps need when given; `image_size` (height, width), `extractor` and `arithmetic` identify what
    they measure and how."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    arrays = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), num_images=num_images)
    if spatial is not None:
        arrays.update(mu_s=np.asarray(spatial[0], np.float64), sigma_s=np.asarray(spatial[1], np.float64))
    if features is not None:
        arrays[FEATURES_KEY] = np.asarray(features, np.float32)
    if image_size is not None:
        arrays[IMAGE_SIZE_KEY] = np.asarray(tuple(image_size)[:2], np.int64)
    if extractor is not None:
        arrays[EXTRACTOR_KEY] = np.array(str(extractor))
    if arithmetic is not None:
        arrays[ARITHMETIC_KEY] = np.array(str(arithmetic))
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def npz_keys(path):
    try:
        with np.load(path) as contents:
            return set(contents.files)
    except (OSError, ValueError) as err:
        raise EvaluationError(f"{path!r} is not a readable .npz: {err}") from None


def holds_statistics(path):
    """True for an npz with mu and sigma; False for image inputs; an error for an npz with only one of them."""
    if not (os.path.isfile(path) and path.endswith(".npz")):
        return False
    present = npz_keys(path) & set(STATISTICS_KEYS)
    if len(present) == 1:
        raise EvaluationError(f"reference {path!r} has {sorted(present)} but not both 'mu' and 'sigma'")
    return len(present) == 2


def load_statistics(path):
    """(mu, sigma) float64 from an npz with keys mu, sigma (ours or ADM's VIRTUAL_*.npz)."""
    return load_feature_statistics(path)[POOL_FEATURES]


def load_feature_statistics(path):
    """{feature name: (mu, sigma)} of a statistics npz: the pool features always, the spatial ones when it has them."""
    if not os.path.isfile(path):
        raise MissingInputError(f"reference statistics {path!r} do not exist")
    keys = npz_keys(path)
    if not set(STATISTICS_KEYS) <= keys:
        raise EvaluationError(
            f"reference {path!r} has no 'mu'/'sigma' statistics (keys: {sorted(keys)}); "
            "expected a statistics npz from evaluations.ref_stats or an ADM reference batch"
        )
    partial = set(SPATIAL_STATISTICS_KEYS) & keys
    if len(partial) == 1:
        raise EvaluationError(f"reference {path!r} has {sorted(partial)} but not both 'mu_s' and 'sigma_s'")
    statistics = {}
    with np.load(path) as contents:
        for name, (mu_key, sigma_key) in KEYS_OF_FEATURES.items():
            if mu_key in contents.files:
                statistics[name] = _checked_statistics(path, contents, mu_key, sigma_key)
    return statistics


def _checked_statistics(path, contents, mu_key, sigma_key):
    mu = np.asarray(contents[mu_key], dtype=np.float64)
    sigma = np.asarray(contents[sigma_key], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise EvaluationError(
            f"reference {path!r}: '{mu_key}' must be (D,) and '{sigma_key}' (D, D), got {mu.shape} and {sigma.shape}"
        )
    for name, values in ((mu_key, mu), (sigma_key, sigma)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise EvaluationError(
                f"reference {path!r}: '{name}' holds {bad} NaN or infinite value(s); recompute it with evaluations.ref_stats"
            )
    return mu, sigma


def statistics_image_size(path):
    """(height, width) of the images a statistics npz was computed over, or None when it does not record it."""
    if IMAGE_SIZE_KEY not in npz_keys(path):
        return None
    with np.load(path) as contents:
        size = np.asarray(contents[IMAGE_SIZE_KEY]).reshape(-1)
    if size.shape != (2,):
        raise EvaluationError(f"reference {path!r}: '{IMAGE_SIZE_KEY}' must be (height, width), got {size.tolist()}")
    return int(size[0]), int(size[1])


def extractor_identity(inception):
    weights = inception.weights_path
    return f"{os.path.basename(weights)} ({os.path.getsize(weights)} bytes)"


def load_features(path):
    """The reference pool features saved with `--features`, or None when the npz holds statistics only."""
    if not (os.path.isfile(path) and path.endswith(".npz")) or FEATURES_KEY not in npz_keys(path):
        return None
    with np.load(path) as contents:
        return np.asarray(contents[FEATURES_KEY], dtype=np.float32)


def arithmetic_mismatch(ref, inception):
    """One line when the statistics npz `ref` records features computed with other arithmetic than `inception`'s.

    A warning, not a refusal: with TF32 off the devices' float32 features differ by rounding only, far
    less than FID differences that matter, but a comparison across papers' numbers should know it.
    """
    if not (str(ref).endswith(".npz") and os.path.isfile(ref)) or ARITHMETIC_KEY not in npz_keys(ref):
        return None
    with np.load(ref) as contents:
        recorded = str(contents[ARITHMETIC_KEY])
    if recorded == inception.arithmetic:
        return None
    return (f"reference {ref!r} was computed in {recorded}, the samples' features in {inception.arithmetic}: "
            f"the FID mixes the two (rewrite the reference with evaluations.ref_stats --device "
            f"{inception.device.type} to compare like with like)")


def statistics_cache_key(source, inception):
    weights = inception.weights_path
    identity = f"{source.fingerprint()}|{os.path.basename(weights)}|{os.path.getsize(weights)}|{inception.arithmetic}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def image_statistics(path, inception, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True, source=None):
    """(mu, sigma) of the images at `path` (or of `source`, opened from it), cached when `cache_dir` is set."""
    return image_feature_statistics(
        path, inception, batch_size, cache_dir, progress, source, need=(POOL_FEATURES,)
    )[POOL_FEATURES]


def image_feature_statistics(
    path, inception, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True, source=None,
    need=(POOL_FEATURES, SPATIAL_FEATURES),
):
    """{feature name: (mu, sigma)} of the images at `path`, cached when `cache_dir` is set.

    A cached file without every feature in `need` (one written before sFID was recorded) is recomputed.
    """
    source = source or open_image_source(path)
    cached = None
    if cache_dir:
        cached = os.path.join(cache_dir, f"{statistics_cache_key(source, inception)}.npz")
        if os.path.isfile(cached):
            statistics = load_feature_statistics(cached)
            if set(need) <= set(statistics):
                log.info("reference statistics of %s from cache %s", path, cached)
                return statistics
            log.info("cached statistics %s predate the sFID features: recomputing them", cached)
    statistics, count = feature_statistics(source, inception, batch_size, progress, desc=f"statistics {path}")
    if cached:
        save_statistics(cached, *statistics[POOL_FEATURES], count, spatial=statistics.get(SPATIAL_FEATURES),
                        image_size=source.image_shape, extractor=extractor_identity(inception),
                        arithmetic=inception.arithmetic)
    return statistics


def reference_statistics(path, inception_factory, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True):
    """(mu, sigma) of `path`: a statistics npz read as is, anything else computed (and cached) as images.

    `inception_factory` is called only when images have to be featurised.
    """
    if holds_statistics(path):
        return load_statistics(path)
    return reference_feature_statistics(path, inception_factory, batch_size, cache_dir, progress)[POOL_FEATURES]


def reference_feature_statistics(path, inception_factory, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True):
    """{feature name: (mu, sigma)} of `path`, like reference_statistics; an old statistics npz lacks the spatial ones."""
    if holds_statistics(path):
        return load_feature_statistics(path)
    if os.path.isfile(path) and path.endswith(".npz") and "arr_0" not in npz_keys(path):
        raise EvaluationError(
            f"reference {path!r} has neither 'mu'/'sigma' statistics nor 'arr_0' images "
            f"(keys: {sorted(npz_keys(path))})"
        )
    return image_feature_statistics(path, inception_factory(), batch_size, cache_dir, progress)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="image folder, ADM samples .npz, sample-batch folder or prepared dataset dir")
    parser.add_argument("out", help="output .npz with keys mu, sigma (pool) and mu_s, sigma_s (spatial, for sFID)")
    parser.add_argument("--inception_weights", default=None, help="torch-fidelity Inception state dict")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--cache_dir", default=default_statistics_cache_dir(), help="'' disables the cache")
    parser.add_argument(
        "--num_images", type=int, default=None, help="only the first N images (quick runs; the paper uses the full set)"
    )
    parser.add_argument(
        "--features", type=str2bool, nargs="?", const=True, default=False,
        help="also store the pool features, so that evaluations.fid --kid needs no reference images",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def run():
        if args.batch_size < 1:
            raise EvaluationError(f"--batch_size must be positive, got {args.batch_size}")
        check_writable(args.out, "output")
        source = open_image_source(args.input)
        inception = InceptionFeatures(args.inception_weights, device=args.device)
        if args.num_images is not None:
            source = FirstImages(source, args.num_images)
        features = None
        if args.features:
            extracted = extract_features(source, inception, args.batch_size, desc=f"features {args.input}")
            features = extracted[POOL_FEATURES]
            statistics = {name: gaussian_statistics(extracted[name]) for name in KEYS_OF_FEATURES}
        else:
            statistics = image_feature_statistics(
                args.input, inception, args.batch_size, args.cache_dir or None, source=source
            )
        mu, sigma = statistics[POOL_FEATURES]
        spatial = statistics[SPATIAL_FEATURES]
        save_statistics(args.out, mu, sigma, source.num_images, features, spatial=spatial,
                        image_size=source.image_shape, extractor=extractor_identity(inception),
                        arithmetic=inception.arithmetic)
        print(
            f"wrote {args.out}: mu {mu.shape}, sigma {sigma.shape}, spatial mu_s {spatial[0].shape} "
            f"over {source.num_images} images"
        )

    return job.run_main(run, prog=None, exit_code=2)


if __name__ == "__main__":
    sys.exit(main())
