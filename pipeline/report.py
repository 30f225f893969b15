"""A Markdown report of a finished plan: what was run, the readings with their directions, the figures.

It reads only what the stages wrote (the results registry, the figures' CSVs,
the stage logs), so it can be regenerated at any time; `readings` turns those
files into the numbers and sentences.
"""

import csv
import datetime
import json
import os
import shutil

from analyses.color_shift import ROUGH_PERCENTILE
from evaluations.registry import read_results
from guided_diffusion.run.atomic import atomic_write_text

from . import curves, readings, seeds
from .plan import load_plan, resolve_config_path
from .runner import FINISHED_PREFIX
from .stages import expand


RESULTS_COPY = "results.jsonl"


def _read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value, digits=1, scale=1.0):
    return "—" if value is None else f"{scale * value:.{digits}f}"


def _with_std(value, std, digits):
    return _fmt(value, digits) + ("" if std is None else f" ± {std:.{digits}f}")


def fid_table(cells, runs):
    """Rows (sampler, steps) x columns runs: FID ± bootstrap std, then KID ± subset std, best FID in bold."""
    settings = sorted({(sampler, steps) for _, sampler, steps in cells}, key=lambda st: (str(st[0]), -(st[1] or 0)))
    lines = ["| sampler | steps | metric | " + " | ".join(runs) + " |", "|---|---:|---|" + "---:|" * len(runs)]
    for sampler, steps in settings:
        row = [cells.get((run, sampler, steps)) for run in runs]
        fids = [r["fid"] for r in row if r is not None]
        best = min(fids, default=None)
        shown = [
            "—" if r is None else (lambda text: f"**{text}**" if r["fid"] == best else text)(_with_std(r["fid"], r.get("fid_std"), 1))
            for r in row
        ]
        lines.append(f"| {sampler} | {steps} | FID | " + " | ".join(shown) + " |")
        if any(r is not None and r.get("kid") is not None for r in row):
            kids = ["—" if r is None or r.get("kid") is None else _with_std(1000 * r["kid"], 1000 * r["kid_std"], 2) for r in row]
            lines.append(f"| {sampler} | {steps} | KID x 1000 | " + " | ".join(kids) + " |")
    return "\n".join(lines)


def band_table(means, runs, column_label, digits=4):
    """Rows curves (Initial first) x bands of t, each with its change against constant weighting."""
    header = "| curve | " + " | ".join(f"{column_label}, {band} | vs constant" for band, _, _ in readings.BANDS) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(readings.BANDS)]
    for curve in [readings.INITIAL] + list(runs):
        cells = []
        for band, _, _ in readings.BANDS:
            value = means.get((curve, band))
            change = None if curve == readings.INITIAL else readings.relative_change(value, means.get((readings.BASELINE, band)))
            cells += [_fmt(value, digits), "—" if change is None else f"{change:+.1f}%"]
        if any(c != "—" for c in cells):
            lines.append(f"| {curve} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def colour_table(colour, runs):
    """Rows T x runs: spread of per-image mean colour, its Frechet distance to the data's, pixel std, and the
    share of rough samples in percent."""
    reference = next((c for c in colour if c.run == "reference"), None)
    steps = sorted({c.steps for c in colour if c.steps is not None})
    by = {(c.run, c.steps): c for c in colour}
    lines = ["| T | reading | " + " | ".join(runs) + " | training images |", "|---:|---|" + "---:|" * (len(runs) + 1)]
    for s in steps:
        for label, key, ref in (("spread of image means", "spread", reference.spread if reference else None),
                                ("FD of image means", "fd", 0.0), ("pixel std", "pixel_std", reference.pixel_std if reference else None),
                                ("rough samples (%)", "rough_fraction", reference.rough_fraction if reference else None)):
            scale = 100.0 if key == "rough_fraction" else 1.0
            values = [getattr(by[(r, s)], key) if (r, s) in by else None for r in runs]
            if key == "rough_fraction" and all(v is None for v in values):
                continue
            lines.append(f"| {s} | {label} | " + " | ".join(_fmt(v, scale=scale) for v in values)
                         + f" | {_fmt(ref, scale=scale)} |")
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
        ("EMA", str(_train_value(ds, "ema_rate")) + (" with warm-up" if _train_value(ds, "ema_warmup") else ""), "0.9999"),
        ("sampling", samplers, "DDPM T = 1000 ... 20"),
        ("FID", f"{ds.sample.get('num_samples')} samples vs {ref_images} training images, at "
         + ", ".join(f"{s.sampler.upper()} T={s.steps}" for s in ds.samplers if s.evaluate), "50K samples vs the full training set"),
    ]
    lines = ["| | this run | the paper |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def unevaluated_line(ds, fid, last):
    """A sentence naming the planned cells of the last checkpoint without a result, or '' when none is missing."""
    missing = {}
    for setting in ds.samplers:
        for run in ds.runs:
            if setting.evaluate and setting.applies_to(last, run) and (run.name, setting.sampler, setting.steps) not in fid:
                missing.setdefault(f"{setting.sampler.upper()} T={setting.steps}", []).append(run.name)
    if not missing:
        return ""
    listed = "; ".join(f"{label} for {len(names)} of {len(ds.runs)} runs" for label, names in missing.items())
    return (f"**In progress.** Not evaluated yet at {last:,} iterations: {listed}. Running the plan again "
            "evaluates them, and this report is rewritten from what exists.")


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
    ds = plan.datasets[0]
    runs = [run.name for run in ds.runs]
    results = plan.under_root("results", "results.jsonl")
    records = read_results(results, missing_ok=True)
    last = max(ds.iterations)
    fid = readings.fid_cells(records, ds.name, iterations=last)
    trained = curves.curve_cells(records, ds.name, last)
    stale = stale_figures(plan)
    mse_rows = [] if "mse_step" in stale else _read_csv(plan.under_root("figures", "mse_step.csv"))
    mse_means = readings.band_means(mse_rows, "mse") if mse_rows else {}
    x0_means = readings.band_means(mse_rows, "x0_mse") if mse_rows and "x0_mse" in mse_rows[0] else {}
    colour_csv = [] if "color_shift" in stale else _read_csv(plan.under_root("figures", "color_shift.csv"))
    colour = readings.colour_rows(colour_csv)
    colour_source = plan.figures.get("color_shift", {}).get("samples_from", "DDIM")
    reference = next((c for c in colour if c.run == "reference"), None)
    colour = [c for c in colour if c.run != "reference"]

    parts = [f"# Report: plan `{plan.name}`", "", f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from `{plan_path}`.", ""]
    parts += [plan.report.get("intro", "").strip(), ""]
    progress = curves.progress_line(trained, runs, last) if trained else unevaluated_line(ds, fid, last)
    if progress:
        parts += [progress, ""]
    lines = [line for (sampler, steps), by_run in sorted(trained.items()) for line in curves.curve_lines(sampler, steps, by_run, runs)]
    groups = seeds.seed_groups(ds.runs)
    # With several seeds, FID and KID are read by the seed-aware rule alone, not also one run at a time.
    lines += readings.headline(runs, colour, mse_means, x0_means, {} if groups else fid, reference.spread if reference else 0.0)
    lines += seeds.seed_lines(fid, groups)
    if lines:
        parts += ["## What the numbers show", ""]
        if trained and (colour or x0_means or mse_means or fid):
            parts += [f"Readings other than FID over training are at the last checkpoint, {last:,} iterations.", ""]
        parts += [f"- {line}" for line in lines] + [""]
    for name in sorted(stale):
        parts += [f"**Not read: `{name}`.** Its CSV is older than {stale[name]}, which it is computed from; "
                  f"run the plan again to remake it.", ""]
    parts += ["## Setting", "", setup_table(plan), ""]
    for (sampler, steps), by_run in sorted(trained.items()):
        parts += [
            f"## FID over training iterations ({sampler.upper()} T={steps}; Fig. 7a)",
            "",
            "FID ± bootstrap standard deviation and KID x 1000 ± its spread, each weighting at each checkpoint "
            "(EMA weights), the same samples' seeds at every checkpoint; the lowest FID of a row in bold.",
            "",
            curves.curve_table(by_run, runs),
            "",
        ]
    if colour:
        parts += [
            f"## Colour shift (Fig. 1, 6) at {last:,} iterations, {colour_source.upper()} samples",
            "",
            "Per sample set, in [0, 255] units: the spread (standard deviation over images, averaged over r, g, b) "
            "of the per-image mean colours, the Frechet distance between Gaussians fitted to the samples' and the "
            "training images' per-image mean colours (0 is no shift), the pixel standard deviation, and the share "
            f"of samples rougher (mean absolute difference of neighbouring pixels) than {ROUGH_PERCENTILE:g}% of the "
            f"training images: grain or leftover noise ({100 - ROUGH_PERCENTILE:g}% of the training images by construction).",
            "",
            colour_table(colour + ([reference] if reference else []), runs),
            "",
        ]
    if x0_means:
        parts += [
            f"## Image error of the one-step estimate (Eq. 6) at {last:,} iterations",
            "",
            "Mean over each band of t of the MSE between x0 and the model's unclipped one-step estimate x0_hat, "
            "which equals the noise MSE divided by SNR(t): the error that constant weighting leaves unweighted at "
            "large t. 'Initial' takes x_t itself as the noise estimate.",
            "",
            band_table(x0_means, runs, "x0 MSE"),
            "",
        ]
    if mse_means:
        parts += [
            f"## Noise error per band of t (Fig. 4, Fig. 10) at {last:,} iterations",
            "",
            "Mean over each band of t of the MSE between the model's noise estimate and the true noise; 'Initial' "
            "is the MSE between the network's input x_t and the noise.",
            "",
            band_table(mse_means, runs, "eps MSE"),
            "",
        ]
    if fid:
        parts += [
            f"## FID and KID on `{ds.name}` at {last:,} iterations" + (" (mini Table 1)" if trained else ""),
            "",
            "FID ± the standard deviation over bootstrap resamples of the samples; KID x 1000 ± its spread over "
            "random halves. Small sample sets bias FID upwards by the same amount for every column, so compare "
            "columns, not the paper's values.",
            "",
            fid_table(fid, [run.name for run in ds.runs if run == run.first_seed] if groups else runs),
            "",
        ]
    if groups and fid:
        parts += [
            f"## Training seeds at {last:,} iterations",
            "",
            "Each weighting trained from every seed listed (other initial weights, noise and data order; the "
            "samples' noise is the same for every model). Seed std: the standard deviation over seeds; bootstrap "
            "std: the mean over seeds of one run's bootstrap standard deviation (KID: spread over subsets). A run's "
            "uncertainty is the larger of the two (last column); a difference of one run from another is resolved "
            f"beyond {readings.RESOLVED_SIGMAS:g} x hypot of the two uncertainties, a difference of means over n "
            "seeds beyond that divided by sqrt(n).",
            "",
            seeds.seed_table(fid, groups),
            "",
        ]
    parts += _figures(plan, out_dir, stale)
    parts += _time_section(plan.root)
    parts += [plan.report.get("outro", "").strip(), ""]
    if os.path.exists(results):
        # The numbers behind the report travel with it: its tables can be remade without the run's files.
        atomic_write_text(os.path.join(out_dir, RESULTS_COPY), open(results).read())
    path = os.path.join(out_dir, "README.md")
    atomic_write_text(path, "\n".join(parts).replace("\n\n\n", "\n\n"))
    return path


def stale_figures(plan):
    """{figure name: what it is older than} for figure CSVs made before the files they are computed from.

    A figure left in the plan's root by an earlier, shorter run (say the 1,000-iteration demo's
    colour statistics beside 4,000-iteration FIDs) must not be read as if it described the
    checkpoints the report's other numbers come from.
    """
    stages = {stage.name: stage for stage in expand(plan)}
    stale = {}
    for name in plan.figures:
        csv_path = plan.under_root("figures", name + ".csv")
        figure = stages.get(f"figure/{name}")
        if figure is None or not os.path.exists(csv_path):
            continue
        inputs = [path for dep in figure.deps for path in stages[dep].outputs if os.path.exists(path)]
        newer = [path for path in inputs if os.path.getmtime(path) > os.path.getmtime(csv_path)]
        if newer:
            stale[name] = f"`{os.path.relpath(max(newer, key=os.path.getmtime), plan.root)}`"
    return stale


def _figures(plan, out_dir, stale):
    figure_dir = os.path.join(out_dir, "figures")
    os.makedirs(figure_dir, exist_ok=True)
    parts = []
    for name, spec in plan.figures.items():
        png = plan.under_root("figures", name + ".png")
        if os.path.exists(png):
            shutil.copyfile(png, os.path.join(figure_dir, name + ".png"))
            caption = spec.get("caption", name.replace("_", " "))
            if name in stale:
                caption += f" (stale: older than {stale[name]})"
            parts += [f"### {caption}", "", f"![{name}](figures/{name}.png)", ""]
    return (["## Figures", ""] + parts) if parts else []


def _time_section(root):
    times = stage_times(root)
    if not times:
        return []
    by_kind = {}
    for stage, seconds in times.items():
        kind = stage.split("/")[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    return [
        "## Time",
        "",
        f"Stage time summed over stages: {sum(times.values()) / 60:.1f} min ("
        + ", ".join(f"{kind} {seconds / 60:.1f} min" for kind, seconds in by_kind.items())
        + ").",
        "",
    ]
