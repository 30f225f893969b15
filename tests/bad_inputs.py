"""Bad inputs to every entry point, the ways a cluster user gets a run wrong; each must end in one line.

`CASES` feeds tests/test_bad_inputs.py, which runs each case's `main(argv)`
in-process and asserts a non-zero exit, one stderr line naming the culprit,
no traceback and no new output file. Run as a module, each case runs in its
own process against a source tree (default: this one), and the census the
reliability issue asks for is printed: tried, one-line answers, tracebacks,
hangs, accepted, data lost, other. The evaluation and dataset cases, and the
newer ones, are in tests/bad_inputs_more.py and tests/bad_inputs_third.py (`all_cases()` joins them):

    python -m tests.bad_inputs [--tree DIR] [--timeout 60]
"""

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from tests.tiny import TINY_MODEL_FLAGS, flag_list, save_random_checkpoint, tiny_flags

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
NOT_AN_IMAGE = b"this is not a png"
# The statistics have Inception's 2048 dimensions, so that code which checks late still gets that far.
FEATURES = 2048
# tqdm's bar is progress, not a message: a line like "metfaces:  50%|#####  | 1/2 [00:00<00:00, 9.1img/s]".
PROGRESS_BAR = re.compile(r"\d+/\d+ \[[\d:<?]+")


class Unavailable(Exception):
    """The case needs something this machine does not allow (mounting a tmpfs, no GPU)."""


# ---- shared inputs ----------------------------------------------------------------------------------


def write_images(folder, count, size=16, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img_{index}.png")
    return folder


def training_argv(data_dir, log_dir, *extra):
    """The tiny model trained on `data_dir` into `log_dir`: checkpoints every 2 steps, 6 steps in all."""
    return flag_list(TINY_MODEL_FLAGS) + [
        "--data_dir", str(data_dir), "--log_dir", str(log_dir), "--batch_size", "2", "--num_workers", "0",
        "--lr", "1e-3", "--max_steps", "6", "--save_interval", "2", "--log_interval", "2", *map(str, extra),
    ]


class Materials:
    """Inputs the cases copy or point at, made once: images, a trained run (steps 2 and 4), statistics, samples."""

    def __init__(self, root):
        from scripts import image_train

        self.root = Path(root)
        self.data = write_images(self.root / "data", 8)
        self.run = self.root / "run"
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            code = image_train.main(training_argv(self.data, self.run, "--max_steps", 4))
        if code != 0:
            raise RuntimeError(f"could not train the tiny model for the bad-input cases (exit {code})")
        self.model = self.run / "model000004.pt"
        self.wide_model = self.root / "wide.pt"
        save_random_checkpoint(self.wide_model, tiny_flags(num_channels=64))
        self.samples = self.root / "samples.npz"
        np.savez(self.samples, arr_0=np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
        self.stats = self.root / "stats.npz"
        np.savez(self.stats, mu=np.zeros(FEATURES), sigma=np.eye(FEATURES))
        self.junk = self.root / "notes.txt"
        self.junk.write_text("not a checkpoint\n")

    def run_copy(self, case_dir):
        return Path(shutil.copytree(self.run, case_dir / "run"))


def mount_tmpfs(hold, directory, size="3m", read_only=False):
    """A tmpfs at `directory` until `hold` closes; Unavailable where mounting is not permitted."""
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")
    hold.callback(subprocess.run, ["umount", "-l", str(directory)], capture_output=True)
    return directory


def read_only_dir(hold, directory):
    """A directory nothing can be written in: a read-only tmpfs as root, else a mode-0555 folder."""
    if os.geteuid() == 0:
        return mount_tmpfs(hold, directory, "1m", read_only=True)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o555)
    hold.callback(directory.chmod, 0o755)
    return directory


def hold_lock(hold, directory):
    """`directory` locked by another process until `hold` closes (a process never conflicts with its own lock).

    Returns what a refusal must name: the holder's pid and host.
    """
    code = ("import sys; from guided_diffusion.run import run_lock; run_lock.acquire(sys.argv[1], 'test'); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    hold.callback(holder.wait)
    hold.callback(holder.stdin.close)
    if holder.stdout.readline().strip() != "held":
        raise RuntimeError(f"the process meant to hold {directory} did not take its lock")
    return [f"pid {holder.pid}", f"host {HOST}"]


def truncated_copy(source, target, keep=1000):
    target.write_bytes(Path(source).read_bytes()[:keep])
    return target


def corrupt_image_folder(case_dir):
    folder = write_images(case_dir / "images", 2)
    (folder / "img_0.png").write_bytes(NOT_AN_IMAGE)
    return folder


# ---- the cases --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadInput:
    name: str
    module: str
    # build(materials, case_dir, hold) -> (argv, strings the error line must contain); `hold` keeps locks and mounts.
    build: Callable
    needs_no_gpu: bool = False
    # Files (relative to the case folder, fnmatch patterns) that are complete by design and may stay.
    may_leave: tuple = ()


CASES = []


def case(module, needs_no_gpu=False, may_leave=()):
    def register(build):
        CASES.append(BadInput(build.__name__, module, build, needs_no_gpu, may_leave))
        return build

    return register


TRAIN, SAMPLE, FID, REF_STATS, PREPARE = (
    "scripts.image_train", "scripts.image_sample", "evaluations.fid", "evaluations.ref_stats", "datasets.prepare",
)


@case(TRAIN)
def train_config_is_a_directory(m, d, hold):
    return training_argv(m.data, d / "run", "--config", d), [f"--config {d}", "directory"]


@case(TRAIN)
def train_config_is_not_utf8(m, d, hold):
    config = d / "latin1.toml"
    config.write_bytes("lr = 1e-4\n# caf\xe9\n".encode("latin-1"))
    return training_argv(m.data, d / "run", "--config", config), [str(config), "UTF-8"]


@case(TRAIN)
def train_config_is_missing(m, d, hold):
    return training_argv(m.data, d / "run", "--config", d / "absent.toml"), [str(d / "absent.toml")]


@case(TRAIN)
def train_config_is_not_toml(m, d, hold):
    config = d / "broken.toml"
    config.write_text("lr = = 1\n")
    return training_argv(m.data, d / "run", "--config", config), [str(config), "TOML"]


@case(TRAIN)
def train_data_dir_is_missing(m, d, hold):
    return training_argv(d / "absent", d / "run"), [f"--data_dir {d / 'absent'}"]


@case(TRAIN)
def train_data_dir_is_a_file(m, d, hold):
    return training_argv(m.junk, d / "run"), [f"--data_dir {m.junk}"]


@case(TRAIN)
def train_data_dir_has_no_images(m, d, hold):
    (d / "empty").mkdir()
    return training_argv(d / "empty", d / "run"), [f"--data_dir {d / 'empty'}", "no images"]


@case(TRAIN)
def train_data_dir_holds_a_corrupt_image(m, d, hold):
    folder = write_images(d / "images", 4)
    (folder / "img_3.png").write_bytes(NOT_AN_IMAGE)
    return training_argv(folder, d / "run"), [str(folder / "img_3.png"), "not in an image format"]


@case(TRAIN)
def train_resume_from_a_truncated_file(m, d, hold):
    path = truncated_copy(m.model, d / "weights.pt")
    return training_argv(m.data, d / "run", "--resume_checkpoint", path), [str(path)]


@case(TRAIN)
def train_resume_from_a_text_file(m, d, hold):
    return training_argv(m.data, d / "run", "--resume_checkpoint", m.junk), [str(m.junk)]


@case(TRAIN)
def train_resume_from_a_directory(m, d, hold):
    return training_argv(m.data, d / "run", "--resume_checkpoint", m.run), [f"--resume_checkpoint {m.run}", "directory"]


@case(TRAIN)
def train_resume_from_a_missing_file(m, d, hold):
    return training_argv(m.data, d / "run", "--resume_checkpoint", d / "model000100.pt"), [str(d / "model000100.pt")]


@case(TRAIN)
def train_resume_from_a_corrupt_manifest(m, d, hold):
    run = m.run_copy(d)
    (run / "checkpoint000004.json").write_text('{"format": "debias-adm-checkpoint", "step": 4, "fi')
    return training_argv(m.data, run, "--resume_checkpoint", run / "checkpoint000004.json"), ["checkpoint000004.json", "JSON"]


@case(TRAIN)
def train_resume_from_a_model_that_differs_from_its_manifest(m, d, hold):
    run = m.run_copy(d)
    (run / "model000004.pt").write_bytes((run / "model000002.pt").read_bytes())
    return training_argv(m.data, run, "--resume_checkpoint", run / "model000004.pt"), ["model000004.pt", "sha256"]


@case(TRAIN)
def train_resume_from_a_set_with_a_truncated_optimizer(m, d, hold):
    run = m.run_copy(d)
    truncated_copy(run / "opt000004.pt", run / "opt000004.pt")
    return training_argv(m.data, run, "--resume_checkpoint", run / "checkpoint000004.json"), ["opt000004.pt", "truncated"]


@case(TRAIN)
def train_resume_auto_with_no_usable_set(m, d, hold):
    run = m.run_copy(d)
    for step in (2, 4):
        truncated_copy(run / f"model{step:06d}.pt", run / f"model{step:06d}.pt")
    return training_argv(m.data, run, "--resume_checkpoint", "auto"), [f"no usable checkpoint in {run}", "model000004.pt"]


@case(TRAIN)
def train_resume_from_another_architecture(m, d, hold):
    return training_argv(m.data, d / "run", "--resume_checkpoint", m.wide_model), [str(m.wide_model), "shape mismatch"]


@case(TRAIN)
def train_log_dir_in_use(m, d, hold):
    return training_argv(m.data, d / "run"), [f"--log_dir {d / 'run'}", *hold_lock(hold, d / "run")]


@case(TRAIN)
def train_log_dir_is_a_file(m, d, hold):
    return training_argv(m.data, m.junk), [f"--log_dir {m.junk}"]


@case(TRAIN)
def train_log_dir_on_a_read_only_filesystem(m, d, hold):
    target = read_only_dir(hold, d / "ro") / "run"
    return training_argv(m.data, target), [str(target)]


# The disk fills at the step-2 save, after a logged step: the log of those steps stays.
@case(TRAIN, may_leave=("small/run/log.txt", "small/run/progress.csv"))
def train_log_dir_fills_the_disk(m, d, hold):
    if os.geteuid() != 0:
        raise Unavailable("mounting a small tmpfs needs root")
    target = mount_tmpfs(hold, d / "small") / "run"
    return training_argv(m.data, target), ["disk full", str(target), "needs about"]


@case(TRAIN)
def train_ema_rate_is_not_a_number(m, d, hold):
    return training_argv(m.data, d / "run", "--ema_rate", "0.9999,fast"), ["--ema_rate", "0.9999,fast"]


@case(TRAIN)
def train_precision_is_unknown(m, d, hold):
    return training_argv(m.data, d / "run", "--precision", "fp8"), ["--precision", "fp8"]


def sampling_argv(model_path, out_dir, *extra):
    return flag_list(TINY_MODEL_FLAGS) + [
        "--model_path", str(model_path), "--out_dir", str(out_dir), "--num_samples", "2", "--batch_size", "2",
        "--timestep_respacing", "2", *map(str, extra),
    ]


@case(SAMPLE)
def sample_model_path_is_a_directory(m, d, hold):
    return sampling_argv(m.run, d / "out"), [f"--model_path {m.run}", "directory"]


@case(SAMPLE)
def sample_model_path_is_missing(m, d, hold):
    return sampling_argv(d / "absent.pt", d / "out"), [str(d / "absent.pt")]


@case(SAMPLE)
def sample_model_path_is_truncated(m, d, hold):
    path = truncated_copy(m.model, d / "ema.pt")
    return sampling_argv(path, d / "out"), [str(path)]


@case(SAMPLE)
def sample_model_path_is_a_text_file(m, d, hold):
    return sampling_argv(m.junk, d / "out"), [str(m.junk)]


@case(SAMPLE)
def sample_model_of_another_architecture(m, d, hold):
    return sampling_argv(m.wide_model, d / "out"), [str(m.wide_model), "shape mismatch"]


@case(SAMPLE)
def sample_config_is_a_directory(m, d, hold):
    return sampling_argv(m.model, d / "out", "--config", d), [f"--config {d}", "directory"]


@case(SAMPLE)
def sample_config_is_not_utf8(m, d, hold):
    config = d / "latin1.toml"
    config.write_bytes(b"[sample]\nseed = 1\n# \xff\n")
    return sampling_argv(m.model, d / "out", "--config", config), [str(config), "UTF-8"]


@case(SAMPLE)
def sample_out_dir_in_use(m, d, hold):
    return sampling_argv(m.model, d / "out"), [f"--out_dir {d / 'out'}", *hold_lock(hold, d / "out")]


@case(SAMPLE)
def sample_out_dir_is_a_file(m, d, hold):
    return sampling_argv(m.model, m.junk), [f"--out_dir {m.junk}"]


@case(SAMPLE)
def sample_out_dir_on_a_read_only_filesystem(m, d, hold):
    target = read_only_dir(hold, d / "ro") / "out"
    return sampling_argv(m.model, target), [str(target)]


@case(SAMPLE)
def sample_num_samples_is_zero(m, d, hold):
    return sampling_argv(m.model, d / "out", "--num_samples", 0), ["--num_samples", "0"]


@case(SAMPLE)
def sample_fewer_than_the_merged_npz_in_out_dir(m, d, hold):
    out = d / "out"
    out.mkdir()
    np.savez(out / "samples_4x16x16x3.npz", arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    return sampling_argv(m.model, out), [f"--out_dir {out}", "samples_4x16x16x3.npz", "--num_samples 2"]


# (case, script, flags, culprits), each case in one line. {run} is a copy of the trained run, then training's
# --log_dir. Sampling uses a model without a manifest, whose recorded flags would otherwise be compared first.
FLAG_CASES = [
    ("train_resume_from_an_ema_file", TRAIN, "--resume_checkpoint {run}/ema_0.9999_000004.pt",
     "--resume_checkpoint {run}/ema_0.9999_000004.pt|modelNNNNNN.pt|model000004.pt"),
    ("train_resume_from_an_optimizer_file", TRAIN, "--resume_checkpoint {run}/opt000004.pt", "{run}/opt000004.pt|modelNNNNNN.pt"),
    ("train_resume_from_an_older_set_would_overwrite_newer_ones", TRAIN, "--resume_checkpoint {run}/model000002.pt",
     "{run}/model000002.pt|model000004.pt|checkpoint000004.json|--resume_checkpoint auto"),
    ("train_min_snr_gamma_is_negative", TRAIN, "--weight_schedule min_snr --min_snr_gamma -5", "--min_snr_gamma -5|> 0|(0, inf)"),
    ("train_p2_k_is_negative", TRAIN, "--weight_schedule p2 --p2_k -1", "--p2_k -1|p2_k > 0"),
    ("train_p2_gamma_is_negative", TRAIN, "--weight_schedule p2 --p2_gamma -1", "--p2_gamma -1|p2_gamma >= 0|[0, inf)"),
    ("train_p2_gamma_is_nan", TRAIN, "--weight_schedule p2 --p2_gamma nan", "--p2_gamma nan|p2_gamma >= 0"),
    ("train_edm_sigma_data_is_zero", TRAIN, "--weight_schedule edm --sigma_data 0", "--sigma_data 0|sigma_data > 0"),
    ("train_soft_min_snr_gamma_is_negative", TRAIN, "--weight_schedule soft_min_snr --soft_min_snr_gamma -4",
     "--soft_min_snr_gamma -4|> 0"),
    ("train_unknown_noise_level_density", TRAIN, "--schedule_sampler edm-normal", "'edm-normal'|'edm-lognormal'"),
    ("train_num_channels_is_zero", TRAIN, "--num_channels 0", "--num_channels 0|positive"),
    ("train_num_channels_is_negative", TRAIN, "--num_channels -32", "--num_channels -32|positive"),
    ("train_channel_mult_too_deep", TRAIN, "--channel_mult 1,1,2,2,4,4", "--channel_mult 1,1,2,2,4,4|--image_size 16|at most 5"),
    ("train_attention_resolution_never_reached", TRAIN, "--attention_resolutions 2", "--attention_resolutions 2|16, 8"),
    ("sample_p2_k_is_negative", SAMPLE, "--weight_schedule p2 --p2_k -1", "--p2_k -1|(0, inf)"),
    ("sample_num_channels_is_zero", SAMPLE, "--num_channels 0", "--num_channels 0|positive"),
    ("sample_channel_mult_too_deep", SAMPLE, "--channel_mult 1,2,2,2,2,2", "--channel_mult 1,2,2,2,2,2|--image_size 16"),
]


def flag_case(module, extra, culprits):
    def build(m, d, hold):
        run = m.run_copy(d) if "{run}" in extra else d / "run"
        argv = training_argv(m.data, run) if module == TRAIN else sampling_argv(m.wide_model, d / "out")
        return argv + extra.format(run=run).split(), culprits.format(run=run).split("|")

    return build


CASES += [BadInput(name, module, flag_case(module, *rest)) for name, module, *rest in FLAG_CASES]


@case(TRAIN)
def train_config_gives_a_negative_p2_gamma(m, d, hold):
    config = d / "p2.toml"
    config.write_text("[diffusion]\nweight_schedule = \"p2\"\np2_gamma = -1\n")
    return training_argv(m.data, d / "run", "--config", config), ["--p2_gamma -1", "p2_gamma >= 0"]


# ---- running them -----------------------------------------------------------------------------------


def message_lines(stderr):
    """The lines of `stderr` that say something (progress bars left out)."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


def check_applicable(case):
    if case.needs_no_gpu and torch.cuda.is_available():
        raise Unavailable("this machine has a GPU")


def run_in_process(case, argv):
    import importlib

    try:
        return importlib.import_module(case.module).main(list(argv))
    except SystemExit as refused:  # argparse's refusal of a command line
        return refused.code


def all_cases():
    """The cases of this module, of tests/bad_inputs_more.py and of tests/bad_inputs_third.py (imported here:
    they build on this one)."""
    from tests import bad_inputs_more, bad_inputs_third

    return CASES + bad_inputs_more.CASES + bad_inputs_third.CASES


def file_states(root):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(root).rglob("*") if p.is_file()}


def census(tree, timeout):
    """Run every case in its own process against `tree`; returns {case name: outcome}.

    "data-lost": the case refused but changed or removed a file that was there before it ran.
    """
    outcomes = {}
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as scratch:
        materials = Materials(Path(scratch) / "materials")
        for number, bad in enumerate(all_cases()):
            case_dir = Path(scratch) / f"case{number:02d}"
            case_dir.mkdir()
            with contextlib.ExitStack() as hold:
                try:
                    check_applicable(bad)
                    argv, culprits = bad.build(materials, case_dir, hold)
                except Unavailable:
                    outcomes[bad.name] = "skipped"
                    continue
                started, before = time.time(), file_states(case_dir)
                try:
                    done = subprocess.run([sys.executable, "-m", bad.module, *map(str, argv)], cwd=case_dir, env=env,
                                          capture_output=True, text=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    outcomes[bad.name] = "hang"
                    continue
                lines = message_lines(done.stderr)
                if done.returncode == 0:
                    outcome = "accepted"
                elif any(file_states(case_dir).get(path) != state for path, state in before.items()
                         if path.name not in ("log.txt", "progress.csv")):
                    outcome = "data-lost"
                elif "Traceback" in done.stderr:
                    outcome = "traceback"
                elif len(lines) == 1 and all(c in lines[0] for c in culprits):
                    outcome = "one-line"
                else:
                    outcome = "other"
                outcomes[bad.name] = outcome
                print(f"{bad.name:60s} {outcome:9s} {time.time() - started:5.1f}s  {(lines or [''])[-1][:150]}", flush=True)
    return outcomes


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the bad-input cases in their own processes and count how they end.")
    parser.add_argument("--tree", default=str(REPO), help="source tree to run them against (default: this one)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds after which a case counts as a hang")
    parser.add_argument("--json", default=None, help="also write the outcome of each case here")
    args = parser.parse_args(argv)
    outcomes = census(args.tree, args.timeout)
    counts = {kind: sum(1 for o in outcomes.values() if o == kind)
              for kind in ("one-line", "traceback", "hang", "accepted", "data-lost", "other", "skipped")}
    tried = len(outcomes) - counts["skipped"]
    print(f"tried {tried}: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(outcomes, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
