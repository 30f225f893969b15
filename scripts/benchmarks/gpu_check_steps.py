"""The GPU check's measurements: the CUDA tests, training and sampling speed against ADM's code.

Each function takes the step's `Deadline` and writes its own result file into `out`; the
speed steps reuse gpu_benchmark's and adm_baseline's measurements row by row, checking
the deadline between rows so that a step stops with what it has.
"""

import csv
import json
import os
import re
import subprocess
import sys

import torch

from guided_diffusion import dist_util
from scripts.benchmarks import adm_baseline, gpu_benchmark, measure
from scripts.benchmarks.gpu_check_base import REPO, SHIM_DIR, subprocess_env, write_json

ADM_PRECISIONS = ("fp32", "fp16")
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def cuda_tests(deadline, out, cuda, marker="cuda"):
    """`pytest -m cuda -q` in a subprocess under the step's deadline; counts, exit status and output tail."""
    path = os.path.join(out, "cuda_tests.json")
    if not cuda:
        result = dict(status="skipped: no CUDA")
        write_json(path, result)
        return result
    command = [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    timeout = max(1.0, deadline.remaining() - 2)
    try:
        done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
        output, returncode, timed_out = done.stdout + done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        returncode, timed_out = None, True
    counts = {}
    for line in output.splitlines()[-5:]:
        for number, word in _SUMMARY.findall(line):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    failed = [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    result = dict(status="timed out" if timed_out else ("passed" if returncode == 0 else "failed"),
                  command=" ".join(command), returncode=returncode, timeout_s=round(timeout, 1), counts=counts,
                  failed=failed, tail=output[-6000:])
    write_json(path, result)
    return result


def benchmark_args(tiny, adm_dir, train_steps, sample_steps, warmup, sample_batch, noise_device=""):
    """gpu_benchmark's arguments for one measurement setting (its parser's defaults otherwise)."""
    argv = ["--batch_size", "8", "--train_steps", str(train_steps), "--sample_steps", str(sample_steps),
            "--warmup", str(warmup), "--sample_batch", str(sample_batch), "--noise_device", noise_device]
    args = gpu_benchmark.build_parser().parse_args(argv + (["--tiny"] if tiny else []))
    args.adm_dir = adm_dir
    return args


def _write_rows(out, stem, rows):
    write_json(os.path.join(out, stem + ".json"), rows)
    columns = sorted({key for row in rows for key in row})
    with open(os.path.join(out, stem + ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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
        made = measure_row()
    except Exception as error:  # noqa: BLE001  (one failed setting, e.g. a compile error, leaves the others)
        return [dict(label=label, status=f"failed: {type(error).__name__}: {str(error)[:500]}")]
    return [dict(row, status="ok") for row in (made if isinstance(made, list) else [made])]


def training_speed(deadline, out, args, precisions, compile_settings, compile_estimate_s):
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
            _write_rows(out, "train_speed", ours)
    if not adm and adm_status == "not reached":
        adm, adm_status = _adm_rows(args, flags, "train", 1, deadline, device)
    result = dict(model=gpu_benchmark.describe(args, flags, device), ours=ours, adm=adm, adm_status=adm_status,
                  ratios=ratios(ours, adm))
    _write_rows(out, "train_speed", ours + adm)
    write_json(os.path.join(out, "train_speed.json"), result)
    return dict(rows=len(ours) + len(adm), adm_status=adm_status)


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
                _write_rows(out, "sample_speed", ours)
    finally:
        os.remove(model_path)
    adm, adm_status = _adm_rows(args, flags, "sample", int(args.sample_batch), deadline, device)
    result = dict(ours=ours, adm=adm, adm_status=adm_status, ratios=ratios(ours, adm))
    _write_rows(out, "sample_speed", ours + adm)
    write_json(os.path.join(out, "sample_speed.json"), result)
    return dict(rows=len(ours) + len(adm), adm_status=adm_status)


def summary_lines(records):
    """One line per step, for the end of the command's output."""
    lines = []
    for record in records:
        detail = record.get("reason") or record.get("error") or json.dumps(record.get("result"), default=str)[:200]
        lines.append(f"{record['step']:12s} {record['status']:8s} {record.get('seconds', 0):7.1f} s  {detail}")
    return lines


def format_table(path):
    """The rows of a speed JSON as measure.format_rows prints them (for the log)."""
    with open(path) as f:
        data = json.load(f)
    rows = [r for r in data.get("ours", []) + data.get("adm", []) if r.get("status") == "ok"]
    return measure.format_rows(rows) if rows else ""
