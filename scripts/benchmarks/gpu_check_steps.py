"""The GPU check's measurements: the CUDA tests, training and sampling speed against ADM's code.

Each function takes the step's `Deadline` and returns its result, which the runner records in
steps.json (`deadline.report` records a partial one as it grows); the speed steps reuse
gpu_benchmark's and adm_baseline's measurements row by row, each row under a timer set to the
deadline (a compile cannot be interrupted between rows), so that a step stops with what it has.
"""

import json
import os
import re
import subprocess
import sys

import torch

from guided_diffusion import dist_util
from scripts.benchmarks import adm_baseline, gpu_benchmark, measure
from scripts.benchmarks.gpu_check_base import REPO, SHIM_DIR, StepFailed, StepTimeout, subprocess_env, time_limit

ADM_PRECISIONS = ("fp32", "fp16")
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


# What the lent GPU machines lack: the CPU dry run collects the CUDA tests as if these were not installed.
GPU_MACHINE_LACKS = ("torch_fidelity", "blobfile")
_COLLECTED = re.compile(r"(\d+) tests? collected")


def _run_pytest(command, timeout):
    try:
        done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
        return done.stdout + done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return output, None, True


def cuda_tests(deadline, cuda, marker="cuda"):
    """`pytest -m cuda -q` in a subprocess under the step's deadline; counts, exit status and output tail.

    Without CUDA (the CPU dry run) the tests are only collected, with GPU_MACHINE_LACKS hidden, as the
    GPU machine would collect them. Raises StepFailed (with the result) unless pytest passed: a
    collection error is a failed check.
    """
    pytest_args = ["-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    if cuda:
        command = [sys.executable] + pytest_args
    else:
        hide = os.path.join(REPO, "tests", "without_modules.py")
        command = [sys.executable, hide, ",".join(GPU_MACHINE_LACKS)] + pytest_args + ["--collect-only"]
    timeout = max(1.0, deadline.remaining() - 2)
    output, returncode, timed_out = _run_pytest(command, timeout)
    counts = {}
    for line in output.splitlines()[-5:]:
        for number, word in _SUMMARY.findall(line):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
        for number in _COLLECTED.findall(line):
            counts["collected"] = int(number)
    failed = [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    status = "timed out" if timed_out else ("passed" if returncode == 0 else "failed")
    result = dict(status=status if cuda else f"collected only (no CUDA): {status}", command=" ".join(command),
                  returncode=returncode, timeout_s=round(timeout, 1), counts=counts, failed=failed, tail=output[-6000:])
    if status != "passed":
        raise StepFailed(f"pytest -m {marker} {result['status']} (exit status {returncode}, {counts or 'no summary'})",
                         result)
    return result


def benchmark_args(tiny, adm_dir, train_steps, sample_steps, warmup, sample_batch, noise_device=""):
    """gpu_benchmark's arguments for one measurement setting (its parser's defaults otherwise)."""
    argv = ["--batch_size", "8", "--train_steps", str(train_steps), "--sample_steps", str(sample_steps),
            "--warmup", str(warmup), "--sample_batch", str(sample_batch), "--noise_device", noise_device]
    args = gpu_benchmark.build_parser().parse_args(argv + (["--tiny"] if tiny else []))
    args.adm_dir = adm_dir
    return args


def _setting(row):
    return "train" if row["kind"] == "train" else row["label"].removeprefix("ADM ").split()[0]


def ratios(ours, adm):
    """ours images/s over ADM's for rows of the same setting (training, or the same sampler), per ADM precision."""
    adm_by = {(_setting(r), r["label"].split()[-1]): r for r in adm}
    table = []
    for row in ours:
        if row.get("status", "ok") != "ok":
            continue
        cells = {f"vs_adm_{p}": row["images_per_s"] / adm_by[(_setting(row), p)]["images_per_s"]
                 for p in ADM_PRECISIONS if (_setting(row), p) in adm_by}
        if cells:
            table.append(dict(kind=row["kind"], label=row["label"], **cells))
    return table


def _adm_rows(args, flags, parts, sample_batch, deadline, device):
    if not os.path.isfile(os.path.join(args.adm_dir, "guided_diffusion", "train_util.py")):
        return [], "skipped: no ADM checkout"
    args.parts = parts
    env = dict(os.environ, PYTHONPATH=SHIM_DIR) if SHIM_DIR in sys.path else None
    try:
        rows = adm_baseline.run_adm(args, flags, list(ADM_PRECISIONS), sample_batch, device,
                                    timeout=max(1.0, deadline.remaining() - 2), env=env)
    except RuntimeError as error:
        return [], f"failed: {str(error)[-2000:]}"
    return [dict(row, status="ok") for row in rows], "ok"


def _timed_row(deadline, estimate, measure_row, label):
    """One row, or a skipped marker when the deadline would pass before it is measured."""
    if deadline.remaining() < estimate:
        return [dict(label=label, status=f"skipped: {deadline.remaining():.0f} s left, needs ~{estimate:.0f} s")]
    try:
        with time_limit(deadline.remaining()):
            made = measure_row()
    except StepTimeout as timeout:
        return [dict(label=label, status=f"timed out: {timeout}")]
    except Exception as error:  # noqa: BLE001  (one failed setting, e.g. a compile error, leaves the others)
        return [dict(label=label, status=f"failed: {type(error).__name__}: {str(error)[:500]}")]
    return [dict(row, status="ok") for row in (made if isinstance(made, list) else [made])]


def training_speed(deadline, args, precisions, compile_settings, compile_estimate_s):
    """Ours at every precision eager, then ADM's fp32/fp16, then ours compiled; ratios to ADM's."""
    device = dist_util.dev()
    flags = gpu_benchmark.model_flags(args)
    flops = gpu_benchmark.training_flops(flags, args.batch_size, device)
    ours, adm, adm_status = [], [], "not reached"
    for compiled in compile_settings:
        if compiled and not adm:
            adm, adm_status = _adm_rows(args, flags, "train", 1, deadline, device)
        for precision in precisions:
            label = gpu_benchmark.row_label(precision, compiled, args)
            estimate = compile_estimate_s if compiled else 5.0
            ours += _timed_row(deadline, estimate, lambda: gpu_benchmark.measure_training(
                flags, precision, compiled, args, device, flops), label)
            deadline.report(dict(ours=ours, adm=adm, adm_status=adm_status))
    if not adm and adm_status == "not reached":
        adm, adm_status = _adm_rows(args, flags, "train", 1, deadline, device)
    return dict(model=gpu_benchmark.describe(args, flags, device), ours=ours, adm=adm, adm_status=adm_status,
                ratios=ratios(ours, adm))


def sampling_speed(deadline, out, args, precisions, noise_devices):
    """DDPM and DDIM images/s, ours per precision and noise device (eager), against ADM's at the same batch."""
    device = dist_util.dev()
    flags = gpu_benchmark.model_flags(args)
    flops_per_image = gpu_benchmark.forward_flops_per_image(flags, device)
    model_path = os.path.join(out, ".speed_model.pt")
    torch.save(gpu_benchmark.create_model_and_diffusion(**flags)[0].state_dict(), model_path)
    ours = []
    try:
        for precision in precisions:
            for noise_device in noise_devices:
                args.noise_device = noise_device
                made = _timed_row(deadline, 10.0, lambda: gpu_benchmark.measure_sampling(
                    flags, precision, False, args, device, model_path, flops_per_image), f"sample {precision}")
                ours += [dict(row, noise_device=noise_device) for row in made]
                deadline.report(dict(ours=ours))
    finally:
        os.remove(model_path)
    adm, adm_status = _adm_rows(args, flags, "sample", int(args.sample_batch), deadline, device)
    return dict(ours=ours, adm=adm, adm_status=adm_status, ratios=ratios(ours, adm))


def _brief(result):
    if isinstance(result, dict) and "ours" in result:
        return dict(rows=len(result["ours"]) + len(result.get("adm", [])), adm_status=result.get("adm_status"))
    if isinstance(result, dict) and "modules" in result:
        return dict(missing=result["missing"])
    if isinstance(result, dict) and "runs" in result:
        return dict(iterations=result.get("iterations"), runs={k: v["status"] for k, v in result["runs"].items()})
    if isinstance(result, dict) and "counts" in result:
        return dict(status=result["status"], counts=result["counts"])
    return result


def summary_lines(records):
    """One line per step, for the end of the command's output."""
    lines = []
    for record in records:
        detail = record.get("reason") or record.get("error") or json.dumps(_brief(record.get("result")), default=str)[:200]
        lines.append(f"{record['step']:12s} {record['status']:8s} {record.get('seconds', 0):7.1f} s  {detail}")
    return lines


def format_table(data):
    """The rows of a speed step's result as measure.format_rows prints them (for the log)."""
    rows = [r for r in data.get("ours", []) + data.get("adm", []) if r.get("status") == "ok"]
    return measure.format_rows(rows) if rows else ""
