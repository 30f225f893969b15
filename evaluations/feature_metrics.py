"""Metrics over whole feature sets, through torch-fidelity's implementations on our features.

- Inception Score (Salimans et al., 2016): exp E_x KL(p(y|x) || p(y)) over
  10 splits, from the logits without bias as the original TF code;
- KID (Binkowski et al., 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3, averaged over random subsets;
- precision / recall (Kynkaanniemi et al., 2019): k-NN (k = 3) radius manifolds.
"""

import numpy as np
import torch

from .errors import EvaluationError

# torch-fidelity is imported where a metric is computed, not here: the GPU machines lack it, and
# importing evaluations (the Inception features, FID) must not need it.

IS_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
SEED = 2020


def _tensor(features, name):
    array = np.asarray(features)
    if array.ndim != 2:
        raise EvaluationError(f"{name} must be an (N, D) array, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def inception_score(logits, splits=IS_SPLITS):
    """(mean, std) of the Inception Score over `splits` splits of the (N, classes) logits."""
    logits = _tensor(logits, "logits")
    if logits.shape[0] < splits:
        raise EvaluationError(f"the Inception Score with {splits} splits needs at least {splits} samples, got {logits.shape[0]}")
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def _check_pair(generated, real):
    generated, real = _tensor(generated, "generated features"), _tensor(real, "reference features")
    if generated.shape[1] != real.shape[1]:
        raise EvaluationError(f"feature dimensions differ: {generated.shape[1]} vs {real.shape[1]}")
    return generated, real


def kernel_inception_distance(generated, real, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE):
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `subsets` random subsets."""
    generated, real = _check_pair(generated, real)
    subset_size = min(subset_size, generated.shape[0], real.shape[0])
    if subset_size < 2:
        raise EvaluationError(f"KID needs at least 2 samples on each side, got {generated.shape[0]} and {real.shape[0]}")
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    out = kid_features_to_metric(
        generated.double(), real.double(), kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=SEED, verbose=False
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def kid_subset_size(num_generated, num_real, largest=KID_SUBSET_SIZE):
    """The usual 1000, or half the smaller set when there are fewer than 2000 images on a side.

    Subsets as large as a set are all that set, so their KID spread would be 0; halves
    differ, and the spread of KID over them bounds the uncertainty of the estimate.
    """
    return max(2, min(largest, num_generated // 2, num_real // 2))


def precision_recall(generated, real, neighborhood=PRC_NEIGHBORHOOD):
    """(precision, recall) of generated features against real ones."""
    generated, real = _check_pair(generated, real)
    if min(generated.shape[0], real.shape[0]) <= neighborhood:
        raise EvaluationError(
            f"precision/recall with k={neighborhood} needs more than {neighborhood} samples on each side, "
            f"got {generated.shape[0]} and {real.shape[0]}"
        )
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(
        generated.float(), real.float(), prc_neighborhood=neighborhood, save_cpu_ram=True, verbose=False
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
