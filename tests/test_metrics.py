"""Metrics as numbers: the Frechet distance and its bootstraps, Inception Score, KID, precision/recall,
each against a closed form or an independent computation."""

import numpy as np
import pytest
import scipy.linalg

from evaluations.errors import EvaluationError
from evaluations.feature_metrics import inception_score, kernel_inception_distance, precision_recall
from evaluations.frechet import (
    RunningMoments,
    bootstrap_frechet_distance,
    frechet_distance,
    frechet_distance_of_features,
    gaussian_statistics,
)


# ---- Frechet distance --------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = rng.uniform(0.1, 3.0, size=12), rng.uniform(0.1, 3.0, size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_full_covariances_matches_closed_forms():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a, b = rng.uniform(0.2, 4.0, size=10), rng.uniform(0.2, 4.0, size=10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    # Commuting covariances share eigenvectors: Tr sqrt(S1 S2) = sum sqrt(a_i b_i).
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b))
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_distance_of_a_feature_set_with_itself_is_zero():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(600, 32)) @ rng.normal(size=(32, 32))
    mu, sigma = gaussian_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_grows_monotonically_with_noise_on_features():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    noise = rng.normal(size=features.shape)
    mu, sigma = gaussian_statistics(features)
    distances = [frechet_distance(mu, sigma, *gaussian_statistics(features + s * noise)) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), distances
    assert distances[0] > 0


def test_frechet_distance_rejects_bad_statistics():
    with pytest.raises(EvaluationError, match="dimensions differ: 3 vs 4"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(EvaluationError, match="at least 2 samples, got 1"):
        gaussian_statistics(np.ones((1, 5)))
    # A "covariance" with a negative eigenvalue has no real square root.
    with pytest.raises(EvaluationError, match="first covariance is not a covariance: it has a negative eigenvalue -1"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(EvaluationError, match="second covariance is not a covariance"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


@pytest.mark.parametrize("num_samples", [20, 90, 400])
def test_frechet_distance_equals_scipys_matrix_square_root_formula(num_samples):
    """The eigenvalue route gives what sqrtm(S1 S2) gives, with singular (N < D) and full-rank covariances."""
    rng = np.random.default_rng(num_samples)
    mixing = rng.normal(size=(48, 48)) * 0.3
    mu1, sigma1 = gaussian_statistics(rng.normal(size=(400, 48)) @ mixing)
    mu2, sigma2 = gaussian_statistics(rng.normal(0.4, 1.1, size=(num_samples, 48)) @ mixing)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("num_samples", [20, 90])
def test_frechet_distance_of_features_equals_the_matrix_square_root_formula(num_samples):
    """The N x N Gram-matrix route gives the D x D formula's answer, with fewer samples than dimensions and with more."""
    rng = np.random.default_rng(num_samples)
    mixing = rng.normal(size=(48, 48)) * 0.3
    reference = rng.normal(size=(400, 48)) @ mixing
    samples = rng.normal(0.4, 1.1, size=(num_samples, 48)) @ mixing
    mu_ref, sigma_ref = gaussian_statistics(reference)
    expected = frechet_distance(*gaussian_statistics(samples), mu_ref, sigma_ref)
    assert frechet_distance_of_features(samples, mu_ref, sigma_ref) == pytest.approx(expected, rel=1e-7)


def test_bootstrap_spread_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(3)
    mu_ref, sigma_ref = np.zeros(16), np.eye(16)
    # Away from the reference the FID is linear in the sample mean, so its spread falls like 1/sqrt(N).
    spreads = [bootstrap_frechet_distance(rng.normal(0.5, 1.0, size=(n, 16)), mu_ref, sigma_ref, 200, seed=1).std()
               for n in (100, 400)]
    assert spreads[0] / spreads[1] == pytest.approx(2.0, rel=0.35)
    again = bootstrap_frechet_distance(np.ones((5, 16)) + np.arange(5)[:, None], mu_ref, sigma_ref, 3, seed=9)
    np.testing.assert_array_equal(again, bootstrap_frechet_distance(np.ones((5, 16)) + np.arange(5)[:, None],
                                                                     mu_ref, sigma_ref, 3, seed=9))


def test_running_moments_equal_two_pass_statistics():
    rng = np.random.default_rng(4)
    features = 1000.0 + rng.normal(size=(257, 6)) @ rng.normal(size=(6, 6))
    moments = RunningMoments()
    for start in range(0, 257, 50):
        moments.update(features[start : start + 50])
    mu, sigma = moments.statistics()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)
    assert moments.count == 257


# ---- IS, KID, precision/recall -----------------------------------------------------------------


def test_inception_score_closed_forms():
    # Confident predictions spread evenly over k classes: p(y) uniform, KL = log k, IS = k.
    k = 10
    assert inception_score(60.0 * np.eye(k), splits=1)[0] == pytest.approx(k, rel=1e-6)
    # Identical predictions: p(y|x) = p(y), IS = 1.
    assert inception_score(np.tile(np.arange(5.0), (20, 1)), splits=2)[0] == pytest.approx(1.0, abs=1e-9)


def test_kid_and_precision_recall_match_direct_computation():
    rng = np.random.default_rng(5)
    generated, real = rng.normal(size=(12, 4)), rng.normal(0.5, 1.2, size=(12, 4))

    def kernel(x, y):
        return (x @ y / x.shape[0] + 1.0) ** 3

    n = 12
    k_gg = sum(kernel(generated[i], generated[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    k_rr = sum(kernel(real[i], real[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    k_gr = sum(kernel(generated[i], real[j]) for i in range(n) for j in range(n)) / (n * n)
    kid, kid_std = kernel_inception_distance(generated, real, subsets=3, subset_size=n)
    assert kid == pytest.approx(k_gg + k_rr - 2.0 * k_gr, rel=1e-9)
    assert kid_std == pytest.approx(0.0, abs=1e-12)

    def kth_radius(points, k=3):
        return np.array([np.sort(np.linalg.norm(points - p, axis=1))[k] for p in points])

    def covered_fraction(queries, points):
        radius = kth_radius(points)
        return np.mean([any(np.linalg.norm(q - p) <= r for p, r in zip(points, radius)) for q in queries])

    precision, recall = precision_recall(generated, real)
    # Fractions of 12 points, returned as float32 by torch-fidelity.
    assert precision == pytest.approx(covered_fraction(generated, real), abs=1e-6)
    assert recall == pytest.approx(covered_fraction(real, generated), abs=1e-6)
    assert 0.0 < recall < 1.0 or 0.0 < precision < 1.0
