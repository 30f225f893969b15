"""A Markdown report of a finished plan: the mini table, the readings that carry signal, the figures.

It reads only what the stages wrote (the results registry, the figures' CSVs,
the training logs), so it can be regenerated at any time.
"""

import csv
import datetime
import json
import os
import shutil

from evaluations.registry import latest, read_results
from guided_diffusion.atomic import atomic_write_text
from .plan import Run, load_plan, resolve_config_path
from .runner import FINISHED_PREFIX

# Above this FID, samples of these datasets are noise-dominated blobs, not images.
NOT_YET_IMAGES_FID = 200

# Timesteps at which the paper's Fig. 4 reads the difference between weightings.
LARGE_T, SMALL_T = 600, 200


def _read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def fid_table(results, dataset, runs, metric="fid", scale=1.0, digits=1):
    """Rows (sampler, steps) x columns runs -> FID (or another metric of the registry, times `scale`), the newest result of each cell."""
    cells = {}
    for (_, weighting, pred, _, sampler, steps), row in latest(
        [r for r in results if r.get("dataset") == dataset], fields=("dataset", "weight_schedule", "pred", "iterations", "sampler", "steps")
    ).items():
        cells[(sampler, steps, Run(weighting, pred).name)] = row
    settings = sorted({(s, t) for s, t, _ in cells}, key=lambda st: (str(st[0]), -(st[1] or 0)))
    lines = ["| sampler | steps | " + " | ".join(runs) + " |", "|---|---:|" + "---:|" * len(runs)]
    for sampler, steps in settings:
        values = [cells.get((sampler, steps, run), {}).get(metric) for run in runs]
        values = [None if v is None else scale * v for v in values]
        best = min((v for v in values if v is not None), default=None)
        shown = [f"**{_fmt(v, digits)}**" if v is not None and v == best else _fmt(v, digits) for v in values]
        lines.append(f"| {sampler} | {steps} | " + " | ".join(shown) + " |")
    any_row = next(iter(cells.values()), {})
    fids = [row["fid"] for row in cells.values()]
    if metric == "fid" and fids and min(fids) > NOT_YET_IMAGES_FID:
        lines += [
            "",
            f"Every FID is above {NOT_YET_IMAGES_FID}: the samples are not yet images (see the few-step grid), "
            "so these numbers rank how far training has got rather than the weightings; the per-timestep "
            "readings below carry the signal at this length.",
        ]
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


def model_parameters(config_path):
    """Parameter count of the UNet a config describes, built on the meta device (no memory, no time)."""
    import torch

    from guided_diffusion.script_util import create_model_and_diffusion, load_config, model_and_diffusion_defaults

    flags = {**model_and_diffusion_defaults(), **load_config(config_path, model_and_diffusion_defaults(), ("model", "diffusion"))}
    with torch.device("meta"):
        model, _ = create_model_and_diffusion(**flags)
    return sum(p.numel() for p in model.parameters())


def _train_value(ds, key):
    from guided_diffusion.script_util import load_config
    from guided_diffusion.train_util import image_train_defaults

    if key in ds.train:
        return ds.train[key]
    defaults = image_train_defaults()
    return load_config(ds.config, defaults, ("model", "diffusion", "train")).get(key, defaults[key])


def setup_table(plan, paper_config="configs/ffhq.toml"):
    """The first dataset's setting beside the paper's (Section 5.1)."""
    ds = plan.datasets[0]
    batch = int(_train_value(ds, "batch_size")) * plan.nproc
    steps = int(ds.train["max_steps"])
    samplers = ", ".join(f"{s.sampler.upper()} T={s.steps}" for s in sorted(ds.samplers, key=lambda s: (s.sampler, s.steps)))
    manifest = os.path.join(ds.data_dir, "manifest.json")
    count = json.load(open(manifest)).get("count") if os.path.exists(manifest) else None
    ref_images = ds.evaluate.get("ref_flags", {}).get("num_images", count)
    paper_config = resolve_config_path(paper_config)
    rows = [
        ("data", f"`{ds.name}`, {count or '?'} images", "FFHQ 70K, CelebA-HQ 30K, AFHQ-dog, MetFaces 1.3K, ..."),
        ("UNet parameters", f"{model_parameters(ds.config) / 1e6:.2f}M", f"{model_parameters(paper_config) / 1e6:.1f}M (ADM, 256x256)"),
        ("training", f"{steps:,} iterations x batch {batch} = {steps * batch:,} images", "500K iterations x batch 8 = 4M images"),
        ("EMA", str(_train_value(ds, "ema_rate")), "0.9999"),
        ("sampling", samplers, "DDPM T = 1000 ... 20"),
        ("FID", f"{ds.sample.get('num_samples')} samples vs {ref_images} training images", "50K samples vs the full training set"),
    ]
    lines = ["| | this run | the paper |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def headline(means, runs):
    """One paragraph from the MSE-step readings, the result that carries signal at any scale."""
    base_large, base_small = means.get(("constant", "large")), means.get(("constant", "small"))
    if not base_large or "debias" not in runs or ("debias", "large") not in means:
        return ""
    change = {run: 100 * (means[(run, "large")] / base_large - 1) for run in runs if (run, "large") in means}
    small = 100 * (means[("debias", "small")] / base_small - 1)
    others = ", ".join(f"{run} {change[run]:+.1f}%" for run in runs if run not in ("constant", "debias") and run in change)
    return (
        f"**Headline.** At the noisy steps (t >= {LARGE_T}), where an epsilon error is amplified by "
        f"`1/sqrt(SNR(t))` into the x0 estimate, the paper's weighting changes the epsilon MSE by "
        f"{change['debias']:+.1f}% against constant weighting ({others}); at the clean steps (t < {SMALL_T}) it "
        f"changes it by {small:+.1f}%. This is the trade the paper describes (Sec. 4.3, Fig. 4 and 10): "
        "weight moves from the easy, clean steps to the noisy ones that decide the image's layout and colours."
    )


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
    results = read_results(plan.under_root("results", "results.jsonl"), missing_ok=True)
    parts = [f"# Report: plan `{plan.name}`", "", f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from `{plan_path}`.", ""]
    parts += [plan.report.get("intro", "").strip(), "", "## Setting", "", setup_table(plan), ""]

    for ds in plan.datasets:
        runs = [run.name for run in ds.runs]
        table, num = fid_table(results, ds.name, runs)
        parts += [f"## FID on `{ds.name}` ({num or '?'} samples per cell; lower is better, best in bold)", "", table, ""]
        if any(r.get("kid") is not None for r in results if r.get("dataset") == ds.name):
            table, _ = fid_table(results, ds.name, runs, metric="kid", scale=1e3, digits=2)
            parts += [f"## KID x 1000 on `{ds.name}` (lower is better, best in bold)", "", table, ""]

    mse_rows = _read_csv(plan.under_root("figures", "mse_step.csv"))
    if mse_rows:
        runs = [run.name for run in plan.datasets[0].runs]
        table, means = mse_readings(mse_rows, runs)
        setting = parts.index("## Setting")
        parts[setting:setting] = [headline(means, runs), ""]
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
