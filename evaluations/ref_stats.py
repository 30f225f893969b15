"""Reference statistics: mu/sigma (float64) of the Inception pool features of a training set.

Written as an npz with ADM's reference-batch keys `mu` and `sigma`, so ADM's
published `VIRTUAL_*.npz` reference batches and our files are interchangeable
as `--ref`. Computing them over a folder takes a while, so results are cached
under the cache directory, keyed by the input's file names, sizes and
modification times and by the Inception weights: a second call with the same
input is a file read.

    python -m evaluations.ref_stats <image folder | samples .npz | prepared dataset dir> <out.npz>
"""

import argparse
import hashlib
import logging
import os
import sys

import numpy as np

from guided_diffusion import job
from guided_diffusion.atomic import atomic_open, check_writable
from guided_diffusion.script_util import str2bool

from .convert_inception import default_cache_dir
from .errors import EvaluationError, MissingInputError
from .features import DEFAULT_BATCH_SIZE, extract_features, pool_statistics
from .frechet import gaussian_statistics
from .inception import POOL_FEATURES, InceptionFeatures
from .sources import FirstImages, open_image_source

log = logging.getLogger(__name__)

STATISTICS_KEYS = ("mu", "sigma")
FEATURES_KEY = "features"


def default_statistics_cache_dir():
    return os.path.join(default_cache_dir(), "ref_stats")


def save_statistics(path, mu, sigma, num_images, features=None):
    """mu, sigma (float64) and, when given, the pool features (float32, N x D) that KID and bootstraps need."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    arrays = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), num_images=num_images)
    if features is not None:
        arrays[FEATURES_KEY] = np.asarray(features, np.float32)
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
    if not os.path.isfile(path):
        raise MissingInputError(f"reference statistics {path!r} do not exist")
    keys = npz_keys(path)
    if not set(STATISTICS_KEYS) <= keys:
        raise EvaluationError(
            f"reference {path!r} has no 'mu'/'sigma' statistics (keys: {sorted(keys)}); "
            "expected a statistics npz from evaluations.ref_stats or an ADM reference batch"
        )
    with np.load(path) as contents:
        mu = np.asarray(contents["mu"], dtype=np.float64)
        sigma = np.asarray(contents["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise EvaluationError(
            f"reference {path!r}: 'mu' must be (D,) and 'sigma' (D, D), got {mu.shape} and {sigma.shape}"
        )
    for name, values in (("mu", mu), ("sigma", sigma)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise EvaluationError(
                f"reference {path!r}: '{name}' holds {bad} NaN or infinite value(s); recompute it with evaluations.ref_stats"
            )
    return mu, sigma


def load_features(path):
    """The reference pool features saved with `--features`, or None when the npz holds statistics only."""
    if not (os.path.isfile(path) and path.endswith(".npz")) or FEATURES_KEY not in npz_keys(path):
        return None
    with np.load(path) as contents:
        return np.asarray(contents[FEATURES_KEY], dtype=np.float32)


def statistics_cache_key(source, inception):
    weights = inception.weights_path
    identity = f"{source.fingerprint()}|{os.path.basename(weights)}|{os.path.getsize(weights)}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]


def image_statistics(path, inception, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True, source=None):
    """(mu, sigma) of the images at `path` (or of `source`, opened from it), cached when `cache_dir` is set."""
    source = source or open_image_source(path)
    cached = None
    if cache_dir:
        cached = os.path.join(cache_dir, f"{statistics_cache_key(source, inception)}.npz")
        if os.path.isfile(cached):
            log.info("reference statistics of %s from cache %s", path, cached)
            return load_statistics(cached)
    mu, sigma, count = pool_statistics(source, inception, batch_size, progress, desc=f"statistics {path}")
    if cached:
        save_statistics(cached, mu, sigma, count)
    return mu, sigma


def reference_statistics(path, inception_factory, batch_size=DEFAULT_BATCH_SIZE, cache_dir=None, progress=True):
    """(mu, sigma) of `path`: a statistics npz read as is, anything else computed (and cached) as images.

    `inception_factory` is called only when images have to be featurised.
    """
    if holds_statistics(path):
        return load_statistics(path)
    if os.path.isfile(path) and path.endswith(".npz") and "arr_0" not in npz_keys(path):
        raise EvaluationError(
            f"reference {path!r} has neither 'mu'/'sigma' statistics nor 'arr_0' images "
            f"(keys: {sorted(npz_keys(path))})"
        )
    return image_statistics(path, inception_factory(), batch_size, cache_dir, progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="image folder, ADM samples .npz, sample-batch folder or prepared dataset dir")
    parser.add_argument("out", help="output .npz with keys mu, sigma")
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
            features = extract_features(source, inception, args.batch_size, desc=f"features {args.input}")[POOL_FEATURES]
            mu, sigma = gaussian_statistics(features)
        else:
            mu, sigma = image_statistics(args.input, inception, args.batch_size, args.cache_dir or None, source=source)
        save_statistics(args.out, mu, sigma, source.num_images, features)
        print(f"wrote {args.out}: mu {mu.shape}, sigma {sigma.shape} over {source.num_images} images")

    return job.run_main(run, prog=None, exit_code=2)


if __name__ == "__main__":
    sys.exit(main())
