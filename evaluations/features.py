"""Batched Inception features of an image source, with a progress bar."""

import numpy as np
from tqdm import tqdm

from .frechet import RunningMoments
from .inception import LOGITS, POOL_FEATURES
from .sources import open_image_source

DEFAULT_BATCH_SIZE = 64


def _as_source(source):
    return open_image_source(source) if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else source


def iter_features(source, inception, batch_size=DEFAULT_BATCH_SIZE, progress=True, desc="Inception features"):
    """Yield {feature name: float32 (n, D)} for consecutive batches of `source` (a path or an opened source)."""
    source = _as_source(source)
    with tqdm(total=source.num_images, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for images in source.batches(batch_size):
            yield inception(images)
            bar.update(images.shape[0])


def extract_features(source, inception, batch_size=DEFAULT_BATCH_SIZE, progress=True, desc="Inception features"):
    """{feature name: float32 (N, D)} of every image of `source`."""
    collected = {}
    for batch in iter_features(source, inception, batch_size, progress, desc):
        for name, values in batch.items():
            collected.setdefault(name, []).append(values)
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def feature_statistics(source, inception, batch_size=DEFAULT_BATCH_SIZE, progress=True, desc="Inception features"):
    """({feature name: (mu, sigma)}, count) of every feature but the logits, streamed so any number of images fits."""
    moments = {}
    for batch in iter_features(source, inception, batch_size, progress, desc):
        for name, values in batch.items():
            if name != LOGITS:
                moments.setdefault(name, RunningMoments()).update(values)
    statistics = {name: running.statistics() for name, running in moments.items()}
    return statistics, moments[POOL_FEATURES].count


def pool_statistics(source, inception, batch_size=DEFAULT_BATCH_SIZE, progress=True, desc="Inception features"):
    """(mu, sigma, count) of the 2048-d pool features, streamed so any number of images fits in memory."""
    statistics, count = feature_statistics(source, inception, batch_size, progress, desc)
    return (*statistics[POOL_FEATURES], count)
