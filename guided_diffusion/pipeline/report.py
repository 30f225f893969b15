"""A Markdown report of a finished plan: the mini table, the readings that carry signal, the figures.

It reads only what the stages wrote (the results registry, the figures' CSVs,
the training logs), so it can be regenerated at any time.
"""

import csv
import datetime
import json
import os
import shutil

from ..atomic import atomic_write_text
from .plan import load_plan
from .runner import FINISHED_PREFIX

# Timesteps at which the paper's Fig. 4 reads the difference between weightings.
LARGE_T, SMALL_T = 600, 200


def _read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_results(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return rows


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def fid_table(results, dataset, runs):
    """Rows (sampler, steps) x columns runs -> FID, the newest result of each cell."""
    cells = {}
    for row in results:
        if row.get("dataset") != dataset or row.get("fid") is None:
            continue
        run = row.get("weight_schedule") if row.get("pred", "eps") in (None, "eps") else f"{row['weight_schedule']}@{row['pred']}"
        cells[(row.get("sampler"), row.get("steps"), run)] = row
    settings = sorted({(s, t) for s, t, _ in cells}, key=lambda st: (str(st[0]), -(st[1] or 0)))
    lines = ["| sampler | steps | " + " | ".join(runs) + " |", "|---|---:|" + "---:|" * len(runs)]
    for sampler, steps in settings:
        values = [cells.get((sampler, steps, run), {}).get("fid") for run in runs]
        best = min((v for v in values if v is not None), default=None)
        shown = [f"**{_fmt(v)}**" if v is not None and v == best else _fmt(v) for v in values]
        lines.append(f"| {sampler} | {steps} | " + " | ".join(shown) + " |")
    any_row = next(iter(cells.values()), {})
    return "\n".join(lines), any_row.get("num_samples")


def mse_readings(rows, runs):
    """Mean epsilon MSE over t >= LARGE_T and t < SMALL_T per curve, from the mse_step CSV."""
    sums = {}
    for row in rows:
        t, curve, mse = int(row["t"]), row["curve"], float(row["mse"])
        band = "large" if t >= LARGE_T else "small" if t < SMALL_T else None
        if band:
            total, count = sums.get((curve, band), (0.0, 0))
            sums[(curve, band)] = (total + mse, count + 1)
    means = {key: total / count for key, (total, count) in sums.items()}
    lines = [
        f"| curve | mean eps-MSE, t >= {LARGE_T} | vs constant | mean eps-MSE, t < {SMALL_T} | vs constant |",
        "|---|---:|---:|---:|---:|",
    ]
    base_large, base_small = means.get(("constant", "large")), means.get(("constant", "small"))

    def relative(value, base):
        return "—" if value is None or not base else f"{100 * (value / base - 1):+.1f}%"

    for curve in ["Initial"] + list(runs):
        large, small = means.get((curve, "large")), means.get((curve, "small"))
        if large is None and small is None:
            continue
        if curve == "Initial":
            lines.append(f"| {curve} | {_fmt(large, 4)} | — | {_fmt(small, 4)} | — |")
        else:
            lines.append(
                f"| {curve} | {_fmt(large, 4)} | {relative(large, base_large)} | {_fmt(small, 4)} | "
                f"{relative(small, base_small)} |"
            )
    return "\n".join(lines), means


def color_readings(rows):
    lines = ["| samples | T | mean shift (L2, 0-255) | spread of image means (FD) |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['checkpoint']} | {row['steps'] or '—'} | {float(row['mean_shift_l2']):.1f} | "
            f"{float(row['spatial_mean_fd']):.1f} |"
        )
    return "\n".join(lines)


def stage_times(root):
    """Seconds each stage took, from the closing line the runner appends to its log."""
    logs = os.path.join(root, "logs")
    times = {}
    if os.path.isdir(logs):
        for name in sorted(os.listdir(logs)):
            with open(os.path.join(logs, name), "rb") as f:
                f.seek(max(0, os.path.getsize(f.name) - 200))
                tail = f.read().decode(errors="replace").strip().splitlines()
            if tail and tail[-1].startswith(FINISHED_PREFIX):
                times[name[: -len(".log")].replace("__", "/")] = float(tail[-1][len(FINISHED_PREFIX):].split()[0])
    return times


def write_report(plan_path, root, out_dir):
    plan = load_plan(plan_path, root=root)
    os.makedirs(out_dir, exist_ok=True)
    results = _read_results(plan.under_root("results", "results.jsonl"))
    parts = [f"# Report: plan `{plan.name}`", "", f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from `{plan_path}`.", ""]
    parts += [plan.report.get("intro", "").strip(), ""]

    for ds in plan.datasets:
        runs = [run.name for run in ds.runs]
        table, num = fid_table(results, ds.name, runs)
        parts += [f"## FID on `{ds.name}` ({num or '?'} samples per cell; lower is better, best in bold)", "", table, ""]

    mse_rows = _read_csv(plan.under_root("figures", "mse_step.csv"))
    if mse_rows:
        runs = [run.name for run in plan.datasets[0].runs]
        table, _ = mse_readings(mse_rows, runs)
        parts += [
            "## Per-timestep noise error (Fig. 4, Fig. 10)",
            "",
            "The paper's mechanism in one table: the epsilon MSE of each model averaged over the noisy "
            f"steps (t >= {LARGE_T}, where `1/sqrt(SNR)` amplifies it into the x0 estimate) and over the "
            f"clean steps (t < {SMALL_T}). 'Initial' is the MSE between the network's input x_t and the noise.",
            "",
            table,
            "",
        ]
    color_rows = _read_csv(plan.under_root("figures", "color_shift.csv"))
    if color_rows:
        parts += [
            "## Colour shift",
            "",
            "Per-channel statistics of the samples against the training images: the L2 distance of the "
            "mean RGB vector, and a Frechet distance between the distributions of per-image mean colours.",
            "",
            color_readings(color_rows),
            "",
        ]

    figure_dir = os.path.join(out_dir, "figures")
    os.makedirs(figure_dir, exist_ok=True)
    shown = []
    for name in plan.figures:
        png = plan.under_root("figures", name + ".png")
        if os.path.exists(png):
            shutil.copyfile(png, os.path.join(figure_dir, name + ".png"))
            shown.append(name)
    if shown:
        parts += ["## Figures", ""]
        for name in shown:
            caption = plan.figures[name].get("caption", name.replace("_", " "))
            parts += [f"### {caption}", "", f"![{name}](figures/{name}.png)", ""]

    times = stage_times(plan.root)
    if times:
        total = sum(times.values())
        by_kind = {}
        for stage, seconds in times.items():
            kind = stage.split("/")[0]
            by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        parts += [
            "## Time",
            "",
            f"Stage time summed over stages: {total / 60:.1f} min ("
            + ", ".join(f"{kind} {seconds / 60:.1f} min" for kind, seconds in by_kind.items())
            + ").",
            "",
        ]
    parts += [plan.report.get("outro", "").strip(), ""]
    path = os.path.join(out_dir, "README.md")
    atomic_write_text(path, "\n".join(parts).replace("\n\n\n", "\n\n"))
    return path
