"""More bad inputs (the census continues here, as tests/bad_inputs.py is full): what a run must not
accept from its own files (a resume that changes the network or objective, a diverging run, sets
marked diverged, sample batches of another run, reference statistics of another resolution), and the
cases of the evaluations and of dataset preparation.

`tests.bad_inputs.all_cases()` joins these to its own, for tests/test_bad_inputs.py and the census.
"""

import json
import shutil
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import numpy as np

from tests.bad_inputs import (
    FEATURES,
    NOT_AN_IMAGE,
    BadInput,
    corrupt_image_folder,
    hold_lock,
    read_only_dir,
    sampling_argv,
    training_argv,
    write_images,
)

CASES = []
TRAIN, SAMPLE, FID, REF_STATS, PREPARE = (
    "scripts.image_train", "scripts.image_sample", "evaluations.fid", "evaluations.ref_stats", "datasets.prepare",
)


def case(module, needs_no_gpu=False, may_leave=()):
    def register(build):
        CASES.append(BadInput(build.__name__, module, build, needs_no_gpu, may_leave))
        return build

    return register


# ---- training -----------------------------------------------------------------------------------------


def resume_changing(flag, value, recorded):
    def build(m, d, hold):
        run = m.run_copy(d)
        argv = training_argv(m.data, run, "--resume_checkpoint", "auto", f"--{flag}", value)
        return argv, [f"--{flag} {value} (checkpoint: {recorded})", str(run / "checkpoint000004.json"),
                      f"--allow_changed_flags {flag}"]

    return build


for _flag, _value, _recorded in (
    ("diffusion_steps", "200", "100"),
    ("noise_schedule", "cosine", "linear"),
    ("predict_xstart", "True", "False"),
    ("learn_sigma", "False", "True"),
    ("num_res_blocks", "2", "1"),
):
    CASES.append(BadInput(f"train_resume_changes_{_flag}", TRAIN, resume_changing(_flag, _value, _recorded)))


@case(TRAIN)
def train_resume_names_a_changed_flag_not_allowed(m, d, hold):
    run = m.run_copy(d)
    argv = training_argv(m.data, run, "--resume_checkpoint", "auto", "--allow_changed_flags", "noise_schedule",
                         "--noise_schedule", "cosine", "--diffusion_steps", "50")
    return argv, ["--diffusion_steps 50 (checkpoint: 100)", "--allow_changed_flags diffusion_steps"]


@case(TRAIN)
def train_allow_changed_flags_names_a_flag_never_compared(m, d, hold):
    return training_argv(m.data, d / "run", "--allow_changed_flags", "lr"), ["--allow_changed_flags lr", "diffusion_steps"]


# A fresh run at lr 1e3 diverges after step 2, so even its set 2 is diverged (every update after it was skipped).
@case(TRAIN, may_leave=("run/*",))
def train_diverges_with_a_huge_learning_rate(m, d, hold):
    argv = training_argv(m.data, d / "run", "--lr", "1e3", "--max_steps", "12", "--keep_checkpoints", "1")
    return argv, ["training diverged at step 6", "nothing was saved for step 6", "no healthy checkpoint"]


@case(TRAIN)
def train_resume_auto_with_only_diverged_sets(m, d, hold):
    run = m.run_copy(d)
    for step in (2, 4):
        path = run / f"checkpoint{step:06d}.json"
        record = json.loads(path.read_text())
        record["health"] = dict(healthy=False, reason="the parameters are not all finite")
        path.write_text(json.dumps(record))
    return training_argv(m.data, run, "--resume_checkpoint", "auto"), [f"no usable checkpoint in {run}", "step 4 (diverged: the parameters are not all finite)"]


# ---- sampling -----------------------------------------------------------------------------------------


def sample_quietly(argv):
    from scripts import image_sample

    with redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        code = image_sample.main(argv)
    if code != 0:
        raise RuntimeError(f"could not sample for a bad-input case (exit {code})")


@case(SAMPLE)
def sample_batch_copied_in_from_another_out_dir(m, d, hold):
    other, out = d / "other", d / "out"
    sample_quietly(sampling_argv(m.model, other, "--num_samples", 4, "--seed", 1))
    sample_quietly(sampling_argv(m.model, out))
    shutil.copy(other / "batches" / "batch_0000002_0000003.npz", out / "batches")
    return sampling_argv(m.model, out, "--num_samples", 4), [f"--out_dir {out}", "batch_0000002_0000003.npz", "seed 1 vs 0"]


@case(SAMPLE)
def sample_out_dir_with_batches_but_no_run_json(m, d, hold):
    other, out = d / "other", d / "out"
    sample_quietly(sampling_argv(m.model, other))
    shutil.copytree(other / "batches", out / "batches")
    return sampling_argv(m.model, out), [f"--out_dir {out}", "1 batch file(s)", "no run.json"]


# ---- evaluation ---------------------------------------------------------------------------------------


def fid_argv(d, *extra, samples=None, ref=None):
    return ["--samples", str(samples), "--ref", str(ref), "--results", str(d / "results.jsonl"), "--cache_dir", "",
            *map(str, extra)]


@case(FID)
def fid_reference_statistics_hold_nan(m, d, hold):
    stats = d / "nan_stats.npz"
    sigma = np.eye(FEATURES)
    sigma[1, 2] = np.nan
    np.savez(stats, mu=np.zeros(FEATURES), sigma=sigma)
    return fid_argv(d, samples=m.samples, ref=stats), [str(stats), "NaN"]


@case(FID)
def fid_metrics_out_on_a_read_only_filesystem(m, d, hold):
    target = read_only_dir(hold, d / "ro") / "metrics.json"
    return fid_argv(d, "--metrics_out", target, samples=m.samples, ref=m.stats), [f"--metrics_out {target}"]


@case(FID)
def fid_results_on_a_read_only_filesystem(m, d, hold):
    target = read_only_dir(hold, d / "ro") / "results.jsonl"
    argv = fid_argv(d, samples=m.samples, ref=m.stats)
    argv[argv.index("--results") + 1] = str(target)
    return argv, [f"--results {target}"]


@case(FID)
def fid_metrics_out_is_a_directory(m, d, hold):
    return fid_argv(d, "--metrics_out", m.root, samples=m.samples, ref=m.stats), [f"--metrics_out {m.root}", "directory"]


@case(FID, needs_no_gpu=True)
def fid_device_cuda_without_a_gpu(m, d, hold):
    return fid_argv(d, "--device", "cuda", samples=m.samples, ref=m.stats), ["--device cuda", "no CUDA GPU"]


@case(FID)
def fid_device_is_not_a_device(m, d, hold):
    return fid_argv(d, "--device", "gpu0", samples=m.samples, ref=m.stats), ["--device", "gpu0"]


@case(FID)
def fid_samples_are_missing(m, d, hold):
    return fid_argv(d, samples=d / "absent.npz", ref=m.stats), [str(d / "absent.npz")]


@case(FID)
def fid_samples_folder_holds_a_corrupt_image(m, d, hold):
    folder = corrupt_image_folder(d)
    return fid_argv(d, samples=folder, ref=m.stats), [str(folder / "img_0.png"), "not in an image format"]


@case(FID)
def fid_reference_npz_holds_neither_statistics_nor_images(m, d, hold):
    ref = d / "other.npz"
    np.savez(ref, weights=np.ones(3))
    return fid_argv(d, samples=m.samples, ref=ref), [str(ref), "mu"]


@case(REF_STATS)
def ref_stats_output_on_a_read_only_filesystem(m, d, hold):
    target = read_only_dir(hold, d / "ro") / "ref.npz"
    return [str(m.samples), str(target), "--cache_dir", ""], [f"output {target}"]


@case(REF_STATS, needs_no_gpu=True)
def ref_stats_device_cuda_without_a_gpu(m, d, hold):
    return [str(m.samples), str(d / "ref.npz"), "--cache_dir", "", "--device", "cuda:0"], ["--device cuda:0", "no CUDA GPU"]


@case(REF_STATS)
def ref_stats_input_holds_a_corrupt_image(m, d, hold):
    folder = corrupt_image_folder(d)
    return [str(folder), str(d / "ref.npz"), "--cache_dir", ""], [str(folder / "img_0.png"), "not in an image format"]


@case(REF_STATS)
def ref_stats_input_is_missing(m, d, hold):
    return [str(d / "absent"), str(d / "ref.npz"), "--cache_dir", ""], [str(d / "absent")]


# The manifest claims the folder (complete: false) before any image, so that a resume cannot mix settings.
@case(PREPARE, may_leave=("prepared/manifest.json",))
def prepare_zip_member_is_not_an_image(m, d, hold):
    archive = d / "metfaces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/00001.png", NOT_AN_IMAGE)
    argv = ["metfaces", str(archive), str(d / "prepared"), "--image_size", "16", "--workers", "1", "--strict"]
    return argv, ["images/00001.png", "not in an image format"]


@case(PREPARE)
def prepare_output_folder_in_use(m, d, hold):
    out = d / "prepared"
    return ["embedded", str(out), "--image_size", "32", "--num_images", "2", "--workers", "1"], [str(out), *hold_lock(hold, out)]

@case(FID)
def fid_samples_of_another_resolution_than_the_reference_statistics(m, d, hold):
    stats = d / "ref16.npz"
    np.savez(stats, mu=np.zeros(FEATURES), sigma=np.eye(FEATURES), image_size=np.array([16, 16]))
    return fid_argv(d, samples=m.samples, ref=stats), [str(m.samples), "8x8", str(stats), "16x16", "--allow_resolution_mismatch"]


@case(FID)
def fid_samples_of_another_resolution_than_the_reference_images(m, d, hold):
    images = write_images(d / "ref_images", 2, size=16)
    return fid_argv(d, samples=m.samples, ref=images), ["8x8", str(images), "16x16 images", "--allow_resolution_mismatch"]
