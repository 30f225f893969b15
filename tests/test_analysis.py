"""Tests for analyses/ and scripts/analysis: every script writes its PNG and CSV,
and the numbers match closed forms or independent computations."""

import contextlib
import importlib
import io
import json
import math
import types

import numpy as np
import pytest
import torch
from PIL import Image

from analyses import color_shift, few_step, fid_curves, mse_step, one_step, schedules
from analyses.flags import checkpoint_specs
from analyses.models import make_diffusion
from analyses.outputs import output_prefix, read_csv
from guided_diffusion.image_ops import to_uint8_nhwc
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.script_util import model_and_diffusion_defaults
from guided_diffusion.weighting import WEIGHT_SCHEDULES
from tests.tiny import TINY_8X8, flag_list, save_random_checkpoint

torch.set_num_threads(1)

IMAGE_SIZE = 8
# The analyses read the paper's 1000-step process; learn_sigma off exercises the fixed-variance paths.
TINY_FLAGS = dict(TINY_8X8, learn_sigma=False, diffusion_steps=1000)


def tiny_settings(**overrides):
    settings = model_and_diffusion_defaults()
    settings.update(TINY_FLAGS, **overrides)
    return settings


def run_script(name, *args):
    """scripts/analysis/<name>.py's main, in this process: (returncode, stdout, stderr) like a finished process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = importlib.import_module(f"scripts.analysis.{name}").main([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 50 and image.height > 50


def to_model_space(images):
    return torch.from_numpy(images).float().div(127.5).sub(1.0).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    settings = tiny_settings()
    paths = {"constant": root / "constant.pt", "debias": root / "debias.pt"}
    models = {name: save_random_checkpoint(path, settings, seed) for seed, (name, path) in enumerate(paths.items())}
    return {"settings": settings, "paths": paths, "models": models}


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    """Six random 10x12 PNGs (centre-cropped to 8x8 on reading) and the crops the readers must produce."""
    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(7)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / f"img_{i}.png")
    from guided_diffusion.image_ops import center_crop_arr

    crops = []
    for i in range(6):
        with Image.open(root / f"img_{i}.png") as image:
            crops.append(center_crop_arr(image.convert("RGB"), IMAGE_SIZE))
    return {"folder": root, "crops": np.stack(crops)}


# ---------------------------------------------------------------- schedules


def linear_alphas_cumprod(steps=1000):
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, steps, dtype=np.float64))


def cosine_alphas_cumprod(steps=1000):
    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
    return np.cumprod(1.0 - np.array(betas))


def test_snr_curves_script_matches_schedules(tmp_path):
    result = run_script("snr_curves", "--out", f"{tmp_path}/fig2/")
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "fig2" / "snr_curves.png")
    rows = read_csv(tmp_path / "fig2" / "snr_curves.csv")
    assert list(rows[0]) == ["t", "schedule", "snr", "amplification"]
    for schedule, alphas_cumprod in (("linear", linear_alphas_cumprod()), ("cosine", cosine_alphas_cumprod())):
        mine = [r for r in rows if r["schedule"] == schedule]
        assert [int(r["t"]) for r in mine] == list(range(1000))
        snr = np.array([float(r["snr"]) for r in mine])
        expected = alphas_cumprod / (1.0 - alphas_cumprod)
        np.testing.assert_allclose(snr, expected, rtol=1e-9)
        np.testing.assert_allclose([float(r["amplification"]) for r in mine], 1.0 / np.sqrt(expected), rtol=1e-9)


def closed_form_weights(snr, p2_k, p2_gamma, min_snr_gamma):
    return {
        "constant": np.ones_like(snr),
        "p2": 1.0 / (p2_k + snr) ** p2_gamma,
        "min_snr": np.minimum(snr, min_snr_gamma) / snr,
        "snr": 1.0 / snr,
        "debias": 1.0 / np.sqrt(snr),
    }


@pytest.mark.parametrize("normalize", ["mean", "max"])
def test_weight_curves_equal_the_registry_functions(tmp_path, monkeypatch, normalize):
    monkeypatch.setitem(WEIGHT_SCHEDULES, "half_snr", lambda snr: 0.5 * snr)
    paths = schedules.run_weight_curves(
        str(tmp_path / "w"), "linear", 1000, normalize, p2_k=2.0, p2_gamma=0.5, min_snr_gamma=3.0
    )
    assert_png(paths["png"])
    rows = read_csv(paths["csv"])
    assert {r["schedule"] for r in rows} == set(WEIGHT_SCHEDULES) | set(schedules.FIELD_RECIPES)
    snr = linear_alphas_cumprod() / (1.0 - linear_alphas_cumprod())
    expected = closed_form_weights(snr, p2_k=2.0, p2_gamma=0.5, min_snr_gamma=3.0)
    expected["half_snr"] = 0.5 * snr
    for name, weight in expected.items():
        mine = [r for r in rows if r["schedule"] == name]
        np.testing.assert_allclose([float(r["weight"]) for r in mine], weight, rtol=1e-9)
        scale = weight.mean() if normalize == "mean" else weight.max()
        np.testing.assert_allclose([float(r["normalized_weight"]) for r in mine], weight / scale, rtol=1e-9)


def test_weight_curves_script(tmp_path):
    result = run_script("weight_curves", "--normalize", "max", "--out", tmp_path / "fig5.png")
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "fig5.png")
    rows = read_csv(tmp_path / "fig5.csv")
    debias = [float(r["normalized_weight"]) for r in rows if r["schedule"] == "debias"]
    assert max(debias) == pytest.approx(1.0) and debias[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------- mse_step


def test_initial_curve_matches_closed_form():
    """E[(x_t - eps)^2] = a_t E[x0^2] + (1 - sqrt(1 - a_t))^2 E[eps^2] (E[x0 eps] = 0), within sampling error."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    diffusion = make_diffusion(tiny_settings())
    timesteps = mse_step.analysis_timesteps(1000, stride=37)
    curves = mse_step.mse_step_curves(diffusion, [], images, timesteps, seed=3, progress=False)
    assert list(curves) == [mse_step.INITIAL_CURVE]
    measured = curves[mse_step.INITIAL_CURVE]["eps"].mean(axis=1)

    levels = np.arange(256) / 127.5 - 1.0  # x0 is uniform on these pixel values
    x2, x4 = np.mean(levels**2), np.mean(levels**4)
    a = linear_alphas_cumprod()[timesteps]
    c1, c2 = np.sqrt(a), np.sqrt(1.0 - a) - 1.0
    expected = c1**2 * x2 + c2**2 * 1.0
    fourth_moment = c1**4 * x4 + 6 * c1**2 * c2**2 * x2 + 3 * c2**4
    sampling_std = np.sqrt((fourth_moment - expected**2) / images.size)
    assert np.all(np.abs(measured - expected) < 5 * sampling_std)
    assert measured[0] > 0.3 and measured[-1] < 1e-4  # the imbalance the paper points at
    # Eq. 6: the image error is the noise error divided by SNR(t), image by image (x_t is float32).
    snr = a / (1 - a)
    np.testing.assert_allclose(curves[mse_step.INITIAL_CURVE]["x0"], curves[mse_step.INITIAL_CURVE]["eps"] / snr[:, None],
                               rtol=1e-4)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_model_curve_is_the_epsilon_error_of_each_parameterisation(tmp_path, real_images, target):
    settings = tiny_settings(predict_xstart=target == "x0", predict_v=target == "v")
    model = save_random_checkpoint(tmp_path / "m.pt", settings, seed=11)
    paths = mse_step.run(
        settings, [("m", str(tmp_path / "m.pt"))], str(real_images["folder"]), out=str(tmp_path / "mse"),
        num_images=5, stride=300, seed=4, batch_size=2, device="cpu", progress=False,
    )
    rows = read_csv(paths["csv"])
    timesteps = [0, 300, 600, 900, 999]
    assert [int(r["t"]) for r in rows if r["curve"] == "m"] == timesteps

    x0 = to_model_space(real_images["crops"][:5])
    noise = IndexedNoise(4, range(5)).randn_like(x0)
    a_all = linear_alphas_cumprod()
    for step in timesteps:
        a = a_all[step]
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        with torch.no_grad():
            out = model(x_t, torch.full((5,), step)).double()
        eps_hat = {
            "eps": out,
            "x0": (x_t.double() - math.sqrt(a) * out) / math.sqrt(1 - a),
            "v": math.sqrt(a) * out + math.sqrt(1 - a) * x_t.double(),
        }[target]
        expected = ((eps_hat - noise.double()) ** 2).mean().item()
        measured = next(float(r["mse"]) for r in rows if r["curve"] == "m" and int(r["t"]) == step)
        assert measured == pytest.approx(expected, rel=1e-4)
        x0_hat = (x_t.double() - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
        measured_x0 = next(float(r["x0_mse"]) for r in rows if r["curve"] == "m" and int(r["t"]) == step)
        assert measured_x0 == pytest.approx(((x0_hat - x0.double()) ** 2).mean().item(), rel=1e-3)
        assert measured_x0 == pytest.approx(measured * (1 - a) / a, rel=1e-3)
        initial = next(float(r["mse"]) for r in rows if r["curve"] == "Initial" and int(r["t"]) == step)
        assert initial == pytest.approx(((x_t.double() - noise) ** 2).mean().item(), rel=1e-6)


def test_mse_step_script_with_config(tmp_path, checkpoints, real_images):
    config = tmp_path / "tiny.toml"
    model_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_FLAGS.items())
    config.write_text(f"[model]\n{model_lines}\n[train]\nlr = 1e-4\n")
    result = run_script(
        "mse_step", "--config", config, "--checkpoint", "constant", checkpoints["paths"]["constant"],
        "--checkpoints", f"debias={checkpoints['paths']['debias']}", "--data_dir", real_images["folder"],
        "--num_images", 4, "--stride", 250, "--device", "cpu", "--out", tmp_path / "fig4",
    )
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "fig4.png")
    rows = read_csv(tmp_path / "fig4.csv")
    assert list(rows[0]) == ["t", "curve", "mse", "sem", "x0_mse", "x0_sem", "num_images"]
    for curve in ("Initial", "constant", "debias"):
        assert [int(r["t"]) for r in rows if r["curve"] == curve] == [0, 250, 500, 750, 999]
    assert all(int(r["num_images"]) == 4 and float(r["mse"]) > 0 for r in rows)


# ---------------------------------------------------------------- one_step_x0


def test_one_step_estimates_match_a_direct_network_call(tmp_path, checkpoints, real_images):
    settings = checkpoints["settings"]
    specs = [(name, str(path)) for name, path in checkpoints["paths"].items()]
    diffusion = make_diffusion(settings)
    from analyses.models import iter_models

    timesteps = (999, 500, 100)
    result = one_step.one_step_analysis(
        diffusion, iter_models(specs, settings, "cpu"), real_images["crops"][:3], timesteps, seed=5,
        clip_denoised=False, batch_size=2, progress=False,
    )
    x0 = to_model_space(real_images["crops"][:3])
    noise = IndexedNoise(5, range(3)).randn_like(x0)
    for step in timesteps:
        a = linear_alphas_cumprod()[step]
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
        torch.testing.assert_close(result["inputs"][step], x_t, rtol=0, atol=1e-5)
        for name, model in checkpoints["models"].items():
            with torch.no_grad():
                eps_hat = model(x_t, torch.full((3,), step))
            expected = (x_t - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
            # float32 rounding of the network output is amplified by 1/sqrt(a_t) (157 at t = 999).
            atol = 2e-5 / math.sqrt(a)
            torch.testing.assert_close(result["estimates"][name][step], expected, rtol=0, atol=atol)

    paths = one_step.write_one_step(result, str(tmp_path / "fig3"))
    rows = read_csv(paths["csv"])
    assert len(rows) == 2 * 3 * 3
    row = next(r for r in rows if r["checkpoint"] == "debias" and r["t"] == "500" and r["image"] == "2")
    expected_mse = ((result["estimates"]["debias"][500][2].double() - x0[2].double()) ** 2).mean().item()
    assert float(row["x0_mse"]) == pytest.approx(expected_mse, rel=1e-9)


def test_one_step_script(tmp_path, checkpoints, real_images):
    result = run_script(
        "one_step_x0", *flag_list(TINY_FLAGS), "--checkpoints",
        ",".join(f"{n}={p}" for n, p in checkpoints["paths"].items()),
        "--data_dir", real_images["folder"], "--num_images", 2, "--timesteps", "999,600,200",
        "--clip_denoised", "False", "--out", tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for name in ("one_step_x0", "one_step_x0_constant", "one_step_x0_debias"):
        assert_png(tmp_path / f"{name}.png")
    rows = read_csv(tmp_path / "one_step_x0.csv")
    assert {(r["checkpoint"], r["t"]) for r in rows} == {(n, t) for n in ("constant", "debias") for t in ("999", "600", "200")}


# ---------------------------------------------------------------- few_step_grid


def test_few_step_script_reproduces_per_index_sampling(tmp_path, checkpoints):
    result = run_script(
        "few_step_grid", *flag_list(TINY_FLAGS), "--checkpoints",
        ",".join(f"{n}={p}" for n, p in checkpoints["paths"].items()),
        "--steps", "2,5", "--num_samples", 3, "--batch_size", 2, "--seed", 9, "--out", tmp_path / "fig1",
    )
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "fig1.png")
    rows = read_csv(tmp_path / "fig1.csv")
    assert len(rows) == 2 * 2 * 3
    for name, model in checkpoints["models"].items():
        for steps in (2, 5):
            with np.load(tmp_path / f"fig1_{name}_T{steps}.npz") as f:
                samples = f["arr_0"]
            diffusion = make_diffusion(checkpoints["settings"], timestep_respacing=str(steps))
            expected = diffusion.p_sample_loop(model, (3, 3, IMAGE_SIZE, IMAGE_SIZE), noise_source=IndexedNoise(9, range(3)))
            assert np.abs(samples.astype(int) - to_uint8_nhwc(expected).astype(int)).max() <= 1
            means = samples.reshape(3, -1, 3).mean(axis=1)
            mine = [r for r in rows if r["checkpoint"] == name and int(r["steps"]) == steps]
            np.testing.assert_allclose([[float(r[f"mean_{c}"]) for c in "rgb"] for r in mine], means, rtol=1e-12)


def test_ddim_grid_starts_every_checkpoint_and_step_count_from_the_same_noise(checkpoints):
    """DDIM with eta = 0 is a deterministic function of x_T alone, so equal noise gives equal outputs."""
    settings = checkpoints["settings"]
    diffusion = make_diffusion(settings, timestep_respacing="3")
    model = checkpoints["models"]["constant"]
    flags = few_step.sampler_flags("ddim", 3)
    together = few_step.sample_images(diffusion, model, 4, IMAGE_SIZE, flags, seed=2, batch_size=4)
    one_by_one = few_step.sample_images(diffusion, model, 4, IMAGE_SIZE, flags, seed=2, batch_size=1)
    np.testing.assert_array_equal(together, one_by_one)
    x_T = IndexedNoise(2, range(4)).randn_like(torch.empty(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    with torch.no_grad():
        out = diffusion.ddim_sample_loop(model, x_T.shape, noise=x_T)
    np.testing.assert_array_equal(together, to_uint8_nhwc(out))
    with pytest.raises(ValueError, match="unknown --sampler 'euler'"):
        few_step.sampler_flags("euler", 3)
    with pytest.raises(ValueError, match="--steps: 1 is too few"):
        few_step.run(settings, [("constant", "unused.pt")], steps=[1, 2])
    with pytest.raises(ValueError, match="--num_samples must be at least 1"):
        few_step.run(settings, [("constant", "unused.pt")], num_samples=0)


# ---------------------------------------------------------------- fid_curves


def registry_line(**fields):
    record = dict(dataset="ffhq", weight_schedule="constant", pred="eps", iterations=100, sampler="ddpm", steps=1000,
                  num_samples=50000, fid=10.0, checkpoint_hash="h", date="2024-01-01")
    record["is"] = None
    record.update(fields)
    return json.dumps(record)


@pytest.fixture
def registry(tmp_path):
    lines = [
        registry_line(weight_schedule="constant", iterations=100, fid=30.0),
        registry_line(weight_schedule="constant", iterations=200, fid=20.0),
        registry_line(weight_schedule="debias", iterations=100, fid=25.0),
        registry_line(weight_schedule="debias", iterations=200, fid=12.0),
        registry_line(weight_schedule="constant", iterations=200, steps=10, fid=60.0),
        registry_line(weight_schedule="debias", iterations=200, steps=10, fid=22.0),
        registry_line(weight_schedule="debias", iterations=200, steps=2, fid=80.0),
        registry_line(weight_schedule="debias", iterations=100, steps=10, fid=40.0),
        registry_line(weight_schedule="debias", iterations=200, fid=11.0),  # a re-evaluation: supersedes 12.0
        registry_line(weight_schedule="debias", iterations=300, fid=None),  # unknown FID: no point
        registry_line(dataset="afhq", weight_schedule="constant", fid=5.0),
        "",
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines))
    return path


def test_fid_curves_points_from_a_fixture_registry(tmp_path, registry):
    result = fid_curves.fid_curves(fid_curves.read_results(registry), dataset="ffhq")
    assert result["at_steps"] == 1000
    points = {(panel, label): [] for panel, label, _ in result["points"]}
    for panel, label, record in result["points"]:
        x = record["iterations"] if panel == "iterations" else record["steps"]
        points[(panel, label)].append((x, record["fid"]))
    assert points == {
        ("iterations", "constant"): [(100, 30.0), (200, 20.0)],
        ("iterations", "debias"): [(100, 25.0), (200, 11.0)],
        ("steps", "constant"): [(10, 60.0), (1000, 20.0)],
        ("steps", "debias"): [(2, 80.0), (10, 22.0), (1000, 11.0)],
    }
    at_100 = fid_curves.fid_curves(fid_curves.read_results(registry), dataset="ffhq", at_iterations=100)
    assert [(r["steps"], r["fid"]) for p, l, r in at_100["points"] if p == "steps" and l == "debias"] == [
        (10, 40.0), (1000, 25.0)]

    result = run_script("fid_curves", "--results", registry, "--dataset", "ffhq", "--out", tmp_path / "fig7")
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "fig7.png")
    rows = read_csv(tmp_path / "fig7.csv")
    assert [(r["panel"], r["curve"], int(r["iterations"]), int(r["steps"]), float(r["fid"])) for r in rows] == [
        ("iterations", "constant", 100, 1000, 30.0), ("iterations", "constant", 200, 1000, 20.0),
        ("steps", "constant", 200, 10, 60.0), ("steps", "constant", 200, 1000, 20.0),
        ("iterations", "debias", 100, 1000, 25.0), ("iterations", "debias", 200, 1000, 11.0),
        ("steps", "debias", 200, 2, 80.0), ("steps", "debias", 200, 10, 22.0), ("steps", "debias", 200, 1000, 11.0),
    ]


def test_fid_curves_errors_name_the_problem(tmp_path, registry):
    with pytest.raises(ValueError, match="several datasets"):
        fid_curves.fid_curves(fid_curves.read_results(registry))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(registry_line() + "\n" + json.dumps({"dataset": "ffhq"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing key\(s\) weight_schedule"):
        fid_curves.read_results(bad)
    result = run_script("fid_curves", "--results", tmp_path / "missing.jsonl", "--out", tmp_path / "x")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"fid_curves: error: results registry {tmp_path / 'missing.jsonl'} does not exist"]


# ---------------------------------------------------------------- color_shift

BASE = np.array([100.0, 120.0, 140.0])
SPREAD = np.array([10.0, 20.0, 30.0])
SIGNS = np.array([[sr, sg, sb] for sr in (-1, 1) for sg in (-1, 1) for sb in (-1, 1)], dtype=np.float64)


def constant_colour_images(colours, size):
    return np.broadcast_to(np.asarray(colours, dtype=np.uint8)[:, None, None, :], (len(colours), size, size, 3)).copy()


def test_color_shift_known_numbers(tmp_path):
    """Eight constant-colour images at BASE + signs * SPREAD have mean BASE and per-channel std SPREAD."""
    reference_folder = tmp_path / "train"
    reference_folder.mkdir()
    for i, image in enumerate(constant_colour_images(BASE + SIGNS * SPREAD, 6)):
        Image.fromarray(image[:, :5]).save(reference_folder / f"{i}.png")  # 5x6: centre-cropped to 4x4
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, arr_0=constant_colour_images(BASE + SIGNS * SPREAD + [6.0, -8.0, 0.0], 4))
    spread_folder = tmp_path / "spread"
    spread_folder.mkdir()
    for i, image in enumerate(constant_colour_images(BASE + 2 * SIGNS * SPREAD, 4)):
        Image.fromarray(image).save(spread_folder / f"{i}.png")

    paths = color_shift.run(
        f"constant:2={shifted},debias={spread_folder}", str(reference_folder), out=str(tmp_path / "colour"),
        progress=False,
    )
    assert_png(paths["png"])
    rows = {r["checkpoint"]: r for r in read_csv(paths["csv"])}

    def channels(row, key):
        return np.array([float(row[f"{key}_{c}"]) for c in "rgb"])

    reference = rows["reference"]
    np.testing.assert_allclose(channels(reference, "mean"), BASE, atol=1e-9)
    np.testing.assert_allclose(channels(reference, "std"), SPREAD, atol=1e-9)
    shifted_row = rows["constant"]
    assert shifted_row["steps"] == "2" and int(shifted_row["num_images"]) == 8
    np.testing.assert_allclose(channels(shifted_row, "mean_diff"), [6.0, -8.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(channels(shifted_row, "std_ratio"), [1.0, 1.0, 1.0], atol=1e-9)
    assert float(shifted_row["mean_shift_l2"]) == pytest.approx(10.0)
    assert float(shifted_row["spatial_mean_fd"]) == pytest.approx(100.0, abs=1e-6)  # same covariance: |d|^2
    # Per-image means are BASE +- SPREAD, four each way: sample std SPREAD * sqrt(8 / 7), averaged over r, g, b.
    assert float(reference["mean_spread"]) == pytest.approx(SPREAD.mean() * np.sqrt(8 / 7))
    assert float(rows["debias"]["mean_spread"]) == pytest.approx(2 * SPREAD.mean() * np.sqrt(8 / 7))
    spread_row = rows["debias"]
    assert spread_row["steps"] == ""
    np.testing.assert_allclose(channels(spread_row, "mean_diff"), 0.0, atol=1e-9)
    np.testing.assert_allclose(channels(spread_row, "std_ratio"), 2.0, atol=1e-9)
    # Covariance 4C against C: tr(C + 4C - 2 sqrt(4 C^2)) = tr(C), with C = SPREAD^2 * 8/7 (unbiased).
    assert float(spread_row["spatial_mean_fd"]) == pytest.approx(np.sum(SPREAD**2) * 8 / 7, rel=1e-9)


def test_roughness_and_rough_fraction(tmp_path):
    """A checkerboard of amplitude a changes by a between every pair of neighbours: roughness 2a; flat images
    have roughness 0, so against flat references every checkerboard counts as rough and no flat image does."""
    rows, columns = np.indices((6, 6))
    board = ((rows + columns) % 2)[..., None] * np.array([30.0, 60.0, 90.0]) + 50.0
    checkerboards = np.stack([board] * 3).astype(np.uint8)
    assert color_shift.roughness(checkerboards) == pytest.approx([2 * 60.0] * 3)
    flat = constant_colour_images(BASE + SIGNS * SPREAD, 6)
    np.testing.assert_array_equal(color_shift.roughness(flat), 0.0)
    np.savez(tmp_path / "reference.npz", arr_0=flat)
    np.savez(tmp_path / "mixed.npz", arr_0=np.concatenate([checkerboards, flat[:5]]))
    paths = color_shift.run(f"mixed={tmp_path / 'mixed.npz'}", str(tmp_path / "reference.npz"),
                            out=str(tmp_path / "rough"), progress=False)
    rows = {r["checkpoint"]: r for r in read_csv(paths["csv"])}
    assert float(rows["mixed"]["rough_fraction"]) == pytest.approx(3 / 8)
    assert float(rows["reference"]["rough_fraction"]) == 0.0


def test_color_shift_script(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "train.npz", arr_0=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "samples.npz", arr_0=rng.integers(0, 128, (6, 8, 8, 3), dtype=np.uint8))
    result = run_script(
        "color_shift", "--samples", f"dark:5={tmp_path / 'samples.npz'}", "--reference", tmp_path / "train.npz",
        "--out", tmp_path / "shift",
    )
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "shift.png")
    rows = read_csv(tmp_path / "shift.csv")
    assert [r["checkpoint"] for r in rows] == ["reference", "dark"]
    assert all(float(rows[1][f"mean_diff_{c}"]) < -50 for c in "rgb")


# ---------------------------------------------------------------- flags and outputs


def test_checkpoint_specs_and_output_prefix(tmp_path):
    assert checkpoint_specs("a=x.pt, b=y.pt", [["c", "z.pt"]]) == [("a", "x.pt"), ("b", "y.pt"), ("c", "z.pt")]
    with pytest.raises(ValueError, match="expected name=path"):
        checkpoint_specs("a")
    with pytest.raises(ValueError, match="given twice"):
        checkpoint_specs("a=x.pt", [["a", "y.pt"]])
    with pytest.raises(ValueError, match="letters, digits"):
        checkpoint_specs("a/b=x.pt")
    with pytest.raises(ValueError, match="no checkpoints"):
        checkpoint_specs("")
    assert output_prefix(str(tmp_path), "mse_step") == str(tmp_path / "mse_step")
    assert output_prefix(str(tmp_path / "new") + "/", "x") == str(tmp_path / "new" / "x")
    assert output_prefix(str(tmp_path / "sub" / "fig.png"), "x") == str(tmp_path / "sub" / "fig")
    assert (tmp_path / "sub").is_dir()


def test_wrong_architecture_is_a_one_line_error(tmp_path, checkpoints, real_images):
    flags = dict(TINY_FLAGS, num_channels=64)
    result = run_script(
        "one_step_x0", *flag_list(flags), "--checkpoint", "constant", checkpoints["paths"]["constant"],
        "--data_dir", real_images["folder"], "--num_images", 1, "--out", tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("one_step_x0: error: checkpoint") and "does not fit the model" in last
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.csv"))
