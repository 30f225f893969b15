"""Sampling at scale: reproducible by index, over ranks and batch sizes, resumable after a kill, ADM's npz."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch as th

from guided_diffusion import samplers, sampling
from guided_diffusion.run import sample_store
from guided_diffusion.script_util import create_argparser, model_and_diffusion_defaults, parse_args_with_config
from tests.tiny import TINY_8X8, save_random_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "image_sample.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"

TINY_MODEL = dict(TINY_8X8, timestep_respacing="4")
NUM_CLASSES = 3


def save_tiny_checkpoint(path, class_cond=False, seed=0, **overrides):
    """The tiny UNet with every weight perturbed, so that samples depend on every layer and stay in range."""
    flags = {**model_and_diffusion_defaults(), **TINY_MODEL, **overrides, "class_cond": class_cond, "num_classes": NUM_CLASSES}
    save_random_checkpoint(path, flags, seed=seed, perturbation=0.05)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return dict(
        uncond=save_tiny_checkpoint(root / "uncond.pt"),
        cond=save_tiny_checkpoint(root / "cond.pt", class_cond=True, seed=1),
        wide=save_tiny_checkpoint(root / "wide.pt", num_channels=64, seed=2),
    )


def sampling_flags(model_path, out_dir, **overrides):
    return {**TINY_MODEL, "model_path": model_path, "out_dir": str(out_dir), "num_samples": 10, "batch_size": 3,
            "seed": 7, **overrides}


def assert_same_up_to_rounding(images, expected):
    """Equal images, except that batched kernels of another batch shape may round a few values across a level.

    Sample i gets the same noise whatever the batch; the model's arithmetic on a
    batch of 3 and one of 4 differs by ~1e-5, which moves a value to the next
    uint8 level about once in a thousand.
    """
    assert images.shape == expected.shape and images.dtype == expected.dtype
    difference = np.abs(images.astype(int) - expected.astype(int))
    assert difference.max() <= 1, difference.max()
    assert np.mean(difference != 0) < 0.01, np.mean(difference != 0)


def run_library(model_path, out_dir, **overrides):
    result = sampling.sample_to_dir(sampling_flags(model_path, out_dir, **overrides), progress=False)
    return result, np.load(result["npz"])


def script_command(flags, nproc=1):
    command = [sys.executable, str(SCRIPT)]
    for key, value in flags.items():
        command += [f"--{key}", str(value)]
    if nproc > 1:
        command = [str(MPIEXEC), "-n", str(nproc)] + command
    return command


def script_env():
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": python_path}


def run_script(flags, nproc=1):
    return subprocess.run(script_command(flags, nproc), capture_output=True, text=True, env=script_env(), timeout=180)


def batch_ranges(out_dir):
    return [(first, last) for first, last, _ in sample_store.scan_batch_files(os.path.join(out_dir, "batches"))]


@pytest.fixture(scope="module")
def reference(checkpoints, tmp_path_factory):
    """An uninterrupted one-process run: 10 samples in batches of 3."""
    out_dir = tmp_path_factory.mktemp("reference")
    result, data = run_library(checkpoints["uncond"], out_dir)
    return dict(out_dir=out_dir, npz=result["npz"], images=data["arr_0"])


# ---- pure pieces ----------------------------------------------------------------------------------


def test_plan_cuts_missing_indices_on_the_batch_grid():
    assert sample_store.plan_batches(10, 4, []) == [(0, 3), (4, 7), (8, 9)]
    assert sample_store.plan_batches(10, 4, [(0, 3), (5, 5)]) == [(4, 4), (6, 7), (8, 9)]
    # Batches written with another batch size: only the indices they miss remain.
    assert sample_store.plan_batches(10, 4, [(0, 2), (3, 5), (9, 11)]) == [(6, 7), (8, 8)]
    assert sample_store.plan_batches(5, 4, [(0, 9)]) == []


def test_class_labels_by_index():
    indices = np.arange(11)
    assert sampling.class_labels_for(indices, "balanced", 0, 4).tolist() == [i % 4 for i in range(11)]
    assert sampling.class_labels_for(indices, "2", 0, 4).tolist() == [2] * 11
    uniform = sampling.class_labels_for(indices, "uniform", 5, 4)
    # Label i depends on (seed, i) only: any subset, in any order, gets the same labels.
    assert sampling.class_labels_for(indices[[7, 3]], "uniform", 5, 4).tolist() == [uniform[7], uniform[3]]
    assert sampling.class_labels_for(indices, "uniform", 6, 4).tolist() != uniform.tolist()
    many = sampling.class_labels_for(np.arange(4000), "uniform", 0, 4)
    counts = np.bincount(many, minlength=4)
    # Multinomial(4000, 1/4): standard deviation of a count is sqrt(4000 * 3/16) ~ 27.
    assert np.all(np.abs(counts - 1000) < 5 * 27.4), counts


def write_synthetic_batches(batch_dir, ranges, rng, labelled=True):
    os.makedirs(batch_dir, exist_ok=True)
    everything = rng.integers(0, 256, size=(max(last for _, last in ranges) + 1, 4, 5, 3), dtype=np.uint8)
    for first, last in ranges:
        labels = np.arange(first, last + 1) * 3 if labelled else None
        sample_store.write_batch_file(batch_dir, first, everything[first : last + 1], labels)
    return everything


def test_merge_streams_batches_into_adm_npz(tmp_path):
    batch_dir = tmp_path / "batches"
    # Out of order, overlapping, and reaching past num_samples.
    everything = write_synthetic_batches(batch_dir, [(6, 9), (0, 2), (3, 7), (10, 12)], np.random.default_rng(0))
    out = tmp_path / "samples.npz"
    shape = sample_store.merge_batches(str(batch_dir), 11, str(out))
    assert shape == (11, 4, 5, 3)
    with np.load(out) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(data["arr_0"], everything[:11])
        np.testing.assert_array_equal(data["arr_1"], np.arange(11) * 3)
    with zipfile.ZipFile(out) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_merge_refuses_a_gap(tmp_path):
    batch_dir = tmp_path / "batches"
    write_synthetic_batches(batch_dir, [(0, 2), (4, 6)], np.random.default_rng(1), labelled=False)
    with pytest.raises(ValueError, match="sample index 3"):
        sample_store.merge_batches(str(batch_dir), 7, str(tmp_path / "samples.npz"))
    assert not os.path.exists(tmp_path / "samples.npz")
    sample_store.merge_batches(str(batch_dir), 3, str(tmp_path / "samples.npz"))
    with np.load(tmp_path / "samples.npz") as data:
        assert data.files == ["arr_0"]


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_dataset_configs_parse_for_sampling(config):
    defaults = sampling.flag_defaults()
    args = parse_args_with_config(create_argparser(defaults), defaults, ["--config", str(config), "--seed", "3"],
                                  sections=sampling.CONFIG_SECTIONS)
    flags = sampling.validate_flags({**{k: getattr(args, k) for k in defaults}, "model_path": "m.pt", "out_dir": "out"})
    assert flags["seed"] == 3 and flags["image_size"] in (16, 32, 64, 128, 256, 512)


# ---- whole runs -----------------------------------------------------------------------------------


def test_run_writes_adm_npz_batches_and_summary(reference, checkpoints):
    images = reference["images"]
    assert Path(reference["npz"]).name == "samples_10x8x8x3.npz"
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8
    assert len({images[i].tobytes() for i in range(10)}) == 10
    assert batch_ranges(reference["out_dir"]) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    summary = json.loads((reference["out_dir"] / "sampling.json").read_text())
    assert summary["num_samples"] == 10 and summary["seed"] == 7 and summary["world_size"] == 1
    assert summary["sampler"] == "ddpm" and summary["timestep_respacing"] == "4"
    assert summary["model_path"] == checkpoints["uncond"]
    assert summary["checkpoint_sha256"] == sampling.file_sha256(checkpoints["uncond"])
    assert summary["timing"]["images_sampled"] == 10
    # Options of other samplers are left out, so readers cannot mistake them for this run's.
    assert "solver_order" not in summary["flags"] and "eta" not in summary["flags"]
    assert summary["flags"]["timestep_respacing"] == "4" and summary["flags"]["batch_size"] == 3


def test_batch_size_does_not_change_images(reference, checkpoints, tmp_path):
    _, data = run_library(checkpoints["uncond"], tmp_path, batch_size=4)
    assert_same_up_to_rounding(data["arr_0"], reference["images"])


def test_resume_with_another_batch_size_samples_only_missing_indices(reference, checkpoints, tmp_path):
    run_library(checkpoints["uncond"], tmp_path)
    os.unlink(tmp_path / "batches" / "batch_0000003_0000005.npz")
    os.unlink(tmp_path / "samples_10x8x8x3.npz")
    result, data = run_library(checkpoints["uncond"], tmp_path, batch_size=4)
    assert result["images_sampled"] == 3
    assert batch_ranges(tmp_path) == [(0, 2), (3, 3), (4, 5), (6, 8), (9, 9)]
    np.testing.assert_array_equal(data["arr_0"][:3], reference["images"][:3])
    np.testing.assert_array_equal(data["arr_0"][6:], reference["images"][6:])
    assert_same_up_to_rounding(data["arr_0"][3:6], reference["images"][3:6])


def test_growing_num_samples_reuses_what_exists(reference, checkpoints, tmp_path):
    first, _ = run_library(checkpoints["uncond"], tmp_path, num_samples=6)
    second, data = run_library(checkpoints["uncond"], tmp_path)
    assert (first["images_sampled"], second["images_sampled"]) == (6, 4)
    np.testing.assert_array_equal(data["arr_0"], reference["images"])
    assert [p.name for p in tmp_path.glob("samples_*.npz")] == ["samples_10x8x8x3.npz"]


def test_png_files_match_npz_and_are_restored(checkpoints, tmp_path):
    _, data = run_library(checkpoints["uncond"], tmp_path, num_samples=4, png=True)
    from PIL import Image

    pngs = [np.asarray(Image.open(tmp_path / "png" / f"{i:06d}.png")) for i in range(4)]
    np.testing.assert_array_equal(np.stack(pngs), data["arr_0"])
    os.unlink(tmp_path / "png" / "000002.png")
    result, _ = run_library(checkpoints["uncond"], tmp_path, num_samples=4, png=True)
    assert result["images_sampled"] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / "000002.png")), data["arr_0"][2])


def test_use_ddim_is_sampler_ddim(checkpoints, tmp_path):
    _, ddim = run_library(checkpoints["uncond"], tmp_path, num_samples=4, sampler="ddim")
    # Same image-defining flags, so the same out_dir is accepted and nothing is resampled.
    result, again = run_library(checkpoints["uncond"], tmp_path, num_samples=4, use_ddim=True)
    assert result["images_sampled"] == 0
    np.testing.assert_array_equal(again["arr_0"], ddim["arr_0"])
    _, ddpm = run_library(checkpoints["uncond"], tmp_path / "ddpm", num_samples=4)
    assert not np.array_equal(ddim["arr_0"], ddpm["arr_0"])


@pytest.mark.parametrize("sampler", ["dpm_solver", "unipc"])
def test_fast_samplers_are_reproducible_by_index(checkpoints, tmp_path, sampler):
    flags = dict(sampler=sampler, timestep_respacing="3", solver_order=2, num_samples=5)
    _, threes = run_library(checkpoints["uncond"], tmp_path / "a", **flags)
    _, twos = run_library(checkpoints["uncond"], tmp_path / "b", batch_size=2, **flags)
    assert_same_up_to_rounding(threes["arr_0"], twos["arr_0"])
    summary = json.loads((tmp_path / "a" / "sampling.json").read_text())
    assert summary["run"]["steps"] == 3 and summary["image_flags"]["solver_order"] == 2
    assert ("unipc_variant" in summary["image_flags"]) == (sampler == "unipc")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_stays_close_to_fp32(reference, checkpoints, tmp_path, precision):
    _, data = run_library(checkpoints["uncond"], tmp_path, precision=precision)
    difference = np.abs(data["arr_0"].astype(int) - reference["images"].astype(int))
    # bfloat16 keeps 8 mantissa bits, float16 11: on average within a level or two out of 255 after 4 steps,
    # and never bit-identical to fp32, which a flag that was silently ignored would be.
    assert 0 < difference.mean() < 2.0, difference.mean()
    summary = json.loads((tmp_path / "sampling.json").read_text())
    assert summary["image_flags"]["precision"] == precision


def test_adm_use_fp16_runs_fp32_on_cpu_and_says_so(reference, checkpoints, tmp_path, capsys):
    _, data = run_library(checkpoints["uncond"], tmp_path, use_fp16=True)
    assert np.array_equal(data["arr_0"], reference["images"])
    assert "--use_fp16 True: this device has no fast float16, running fp32" in capsys.readouterr().out
    _, insisted = run_library(checkpoints["uncond"], tmp_path / "insist", use_fp16=True, precision="fp16")
    assert not np.array_equal(insisted["arr_0"], reference["images"])


@pytest.mark.parametrize("mode", ["balanced", "2", "uniform"])
def test_class_conditional_labels(checkpoints, tmp_path, mode):
    flags = dict(class_cond=True, num_classes=NUM_CLASSES, class_labels=mode, num_samples=7)
    _, data = run_library(checkpoints["cond"], tmp_path / "a", **flags)
    labels = data["arr_1"]
    assert labels.shape == (7,) and labels.dtype == np.int64
    if mode == "balanced":
        assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
        assert np.bincount(labels).tolist() == [3, 2, 2]
    elif mode == "2":
        assert labels.tolist() == [2] * 7
    else:
        assert labels.tolist() == sampling.class_labels_for(np.arange(7), "uniform", 7, NUM_CLASSES).tolist()
        _, regrouped = run_library(checkpoints["cond"], tmp_path / "b", batch_size=2, **flags)
        np.testing.assert_array_equal(regrouped["arr_1"], labels)
        assert_same_up_to_rounding(regrouped["arr_0"], data["arr_0"])


def test_non_finite_samples_are_refused_not_written(checkpoints, tmp_path, monkeypatch):
    def poisoned_at_4(model, diffusion, shape, *, noise_source, **kwargs):
        batch = noise_source.randn_like(th.empty(shape)).clamp(-1, 1)
        if 4 in noise_source.indices:
            batch[noise_source.indices.index(4), 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setitem(samplers.SAMPLERS, "poisoned", samplers.Sampler(run=poisoned_at_4))
    with pytest.raises(sampling.NonFiniteSamplesError, match=r"sample\(s\) 4 came out NaN .* indices 3\.\.5"):
        run_library(checkpoints["uncond"], tmp_path, sampler="poisoned")
    assert batch_ranges(tmp_path) == [(0, 2)]


def test_labels_reach_the_model(checkpoints, tmp_path):
    flags = dict(class_cond=True, num_classes=NUM_CLASSES, num_samples=3)
    _, zero = run_library(checkpoints["cond"], tmp_path / "zero", class_labels="0", **flags)
    _, two = run_library(checkpoints["cond"], tmp_path / "two", class_labels="2", **flags)
    assert not np.array_equal(zero["arr_0"], two["arr_0"])


# ---- bad input ------------------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model_path .*missing.pt: no such file"):
        run_library(str(tmp_path / "missing.pt"), tmp_path / "out")


def test_checkpoint_that_does_not_fit_names_keys(checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"wide\.pt.*shape mismatch.*input_blocks\.0\.0\.weight \(64, 3, 3, 3\)"):
        run_library(checkpoints["wide"], tmp_path / "out")
    with pytest.raises(ValueError, match=r"cond\.pt.*unexpected key\(s\): label_emb\.weight"):
        run_library(checkpoints["cond"], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / "run.json")


def test_num_samples_zero(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="--num_samples must be at least 1, got 0"):
        run_library(checkpoints["uncond"], tmp_path / "out", num_samples=0)


def test_unwritable_out_dir(checkpoints, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(sample_store.OutDirError, match="--out_dir .*a_file/out: cannot create it"):
        run_library(checkpoints["uncond"], blocker / "out")


def test_other_flags_in_used_out_dir_are_refused(reference, checkpoints):
    with pytest.raises(sample_store.RunMismatchError, match=r"seed \(run: 7, now: 8\)"):
        run_library(checkpoints["uncond"], reference["out_dir"], seed=8)
    with pytest.raises(sample_store.RunMismatchError, match="checkpoint_sha256"):
        run_library(checkpoints["cond"], reference["out_dir"], class_cond=True, num_classes=NUM_CLASSES)
    with pytest.raises(sample_store.RunMismatchError, match=r"eta \(run: None, now: 0\.0\), sampler \(run: 'ddpm', now: 'ddim'\), timestep_respacing"):
        run_library(checkpoints["uncond"], reference["out_dir"], sampler="ddim", timestep_respacing="ddim4")


def test_flags_that_do_not_apply_are_refused(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="--eta does not apply to --sampler ddpm"):
        run_library(checkpoints["uncond"], tmp_path, eta=1.0)
    with pytest.raises(ValueError, match="bad --timestep_respacing 'ten'"):
        run_library(checkpoints["uncond"], tmp_path, sampler="dpm_solver", timestep_respacing="ten")
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        run_library(checkpoints["uncond"], tmp_path, class_labels="balanced")


def test_script_reports_one_line_and_fails(checkpoints, reference):
    completed = run_script(sampling_flags(checkpoints["uncond"], reference["out_dir"], seed=9))
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds samples made with other flags: seed" in lines[0], completed.stderr


# ---- processes ------------------------------------------------------------------------------------


@pytest.mark.mpi
def test_two_ranks_write_the_same_npz_bytes(reference, checkpoints, tmp_path):
    completed = run_script(sampling_flags(checkpoints["uncond"], tmp_path), nproc=2)
    assert completed.returncode == 0, completed.stderr
    npz = tmp_path / "samples_10x8x8x3.npz"
    assert npz.read_bytes() == Path(reference["npz"]).read_bytes()
    assert "10/10" in completed.stderr and "img/s" in completed.stderr
    assert json.loads((tmp_path / "sampling.json").read_text())["world_size"] == 2


@pytest.mark.mpi
def test_two_ranks_fail_together_with_one_line(reference, checkpoints):
    completed = run_script(sampling_flags(checkpoints["uncond"], reference["out_dir"], seed=9), nproc=2)
    assert completed.returncode != 0
    errors = [line for line in completed.stderr.splitlines() if line.startswith("image_sample.py: error:")]
    assert errors and all("holds samples made with other flags: seed (run: 7, now: 9)" in e for e in errors), completed.stderr


@pytest.mark.mpi
def test_killed_run_resumes_to_the_uninterrupted_result(checkpoints, tmp_path):
    # Enough steps that a batch takes a noticeable time, so the kill lands between batches.
    flags = sampling_flags(checkpoints["uncond"], tmp_path / "killed", num_samples=12, batch_size=2,
                           timestep_respacing="100")
    process = subprocess.Popen(script_command(flags), env=script_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(batch_ranges(tmp_path / "killed")) < 2 and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    done = batch_ranges(tmp_path / "killed")
    assert 2 <= len(done) < 6, done
    assert not list((tmp_path / "killed").glob("samples_*.npz"))

    # Resume on two ranks: only the missing indices are sampled, in the batches an uninterrupted run makes.
    resumed = run_script(flags, nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    assert batch_ranges(tmp_path / "killed") == [(first, first + 1) for first in range(0, 12, 2)]
    summary = json.loads((tmp_path / "killed" / "sampling.json").read_text())
    assert summary["timing"]["images_sampled"] == 12 - 2 * len(done)

    result, _ = run_library(checkpoints["uncond"], tmp_path / "whole",
                            **{k: v for k, v in flags.items() if k not in ("model_path", "out_dir")})
    assert (tmp_path / "killed" / "samples_12x8x8x3.npz").read_bytes() == Path(result["npz"]).read_bytes()
