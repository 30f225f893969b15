"""FID against training iterations and against sampling steps (Fig. 7 a/b), read from the results registry.

The registry (`results/results.jsonl`, written by the evaluation suite) holds
one JSON object per evaluation. A curve is one weighting (and, where the file
mixes them, one prediction target, sampler and sample count); where an
evaluation was repeated, the later line wins. Lines whose fid, iterations or
steps are null (unknown) have no place on either axis and are left out.
"""

from collections import Counter

from evaluations import registry
from evaluations.errors import EvaluationError

from .outputs import output_prefix, save_figure, write_csv
from .plotting import new_figure

DEFAULT_RESULTS = registry.DEFAULT_RESULTS
REQUIRED_KEYS = ("dataset", "weight_schedule", "pred", "iterations", "sampler", "steps", "num_samples", "fid")
CURVE_FIELDS = ("weight_schedule", "pred", "schedule_sampler", "sampler", "num_samples")


def read_results(path):
    """The registry's records (evaluations.registry's reader); a record without the curve fields is an error naming it."""
    try:
        records = registry.read_results(path)
    except EvaluationError as err:
        raise ValueError(str(err)) from None
    for record in records:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}:{record['_line']}: missing key(s) {', '.join(missing)}")
    return records


def _select(records, dataset, sampler, num_samples):
    datasets = sorted({str(r["dataset"]) for r in records})
    if dataset is None:
        if len(datasets) != 1:
            raise ValueError(f"the registry holds several datasets ({', '.join(datasets)}): choose one with --dataset")
        dataset = datasets[0]
    chosen = [
        r for r in records
        if r["dataset"] == dataset
        and all(r[k] is not None for k in ("fid", "iterations", "steps"))
        and (sampler is None or r["sampler"] == sampler)
        and (num_samples is None or r["num_samples"] == num_samples)
    ]
    if not chosen:
        raise ValueError(
            f"no results for --dataset {dataset!r}"
            + (f" --sampler {sampler}" if sampler else "")
            + (f" --num_samples {num_samples}" if num_samples else "")
            + f" (datasets in the registry: {', '.join(datasets) or 'none'})"
        )
    return dataset, chosen


def _curve_key(record):
    return tuple(registry.record_value(record, f) for f in CURVE_FIELDS)


def _curve_label(key, varying):
    parts = [str(key[0])] + [f"{field}={value}" for field, value in zip(CURVE_FIELDS[1:], key[1:]) if field in varying]
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def fid_curves(records, dataset=None, sampler=None, num_samples=None, at_steps=None, at_iterations=None):
    """The points of both panels.

    (a) FID over iterations at `at_steps` sampling steps (default: the most
    frequent step count among the selected results); (b) FID over sampling steps
    at `at_iterations` (default: each curve's latest iterations). Returns a dict
    with dataset, at_steps, and `points`: (panel, label, record) tuples sorted
    along the x axis.
    """
    dataset, chosen = _select(records, dataset, sampler, num_samples)
    latest = {
        (cell[:-2], int(cell[-2]), int(cell[-1])): record
        for cell, record in registry.latest(chosen, fields=CURVE_FIELDS + ("iterations", "steps")).items()
    }
    keys = list(dict.fromkeys(_curve_key(r) for r in chosen))
    varying = {f for i, f in enumerate(CURVE_FIELDS) if len({k[i] for k in keys}) > 1}
    if at_steps is None:
        at_steps = Counter(steps for (_, _, steps) in latest).most_common(1)[0][0]

    points = []
    for key in keys:
        label = _curve_label(key, varying)
        mine = {(it, st): r for (k, it, st), r in latest.items() if k == key}
        for (it, st) in sorted(mine):
            if st == at_steps:
                points.append(("iterations", label, mine[(it, st)]))
        final = at_iterations if at_iterations is not None else max(it for it, _ in mine)
        for (it, st) in sorted(mine, key=lambda p: p[1]):
            if it == final:
                points.append(("steps", label, mine[(it, st)]))
    return {"dataset": dataset, "at_steps": at_steps, "at_iterations": at_iterations, "points": points}


def write_fid_curves(result, prefix):
    header = ("panel", "curve", "weight_schedule", "pred", "sampler", "num_samples", "iterations", "steps", "fid",
              "fid_std")
    rows = [
        (panel, label, r["weight_schedule"], r["pred"], r["sampler"], r["num_samples"], r["iterations"], r["steps"],
         r["fid"], r.get("fid_std"))
        for panel, label, r in result["points"]
    ]
    csv_path = write_csv(prefix + ".csv", header, rows)

    figure = new_figure(10, 3.8)
    by_iterations, by_steps = figure.subplots(1, 2)
    labels = list(dict.fromkeys(label for _, label, _ in result["points"]))
    for index, label in enumerate(labels):
        for axes, panel, x_key in ((by_iterations, "iterations", "iterations"), (by_steps, "steps", "steps")):
            mine = [r for p, l, r in result["points"] if p == panel and l == label]
            if mine:
                # Bars: the bootstrap standard deviation of each FID, where the evaluation measured one.
                spread = [r.get("fid_std") or 0.0 for r in mine]
                axes.errorbar([r[x_key] for r in mine], [r["fid"] for r in mine], yerr=spread, marker="o",
                              color=f"C{index}", label=label, capsize=3)
    by_iterations.set_xlabel("training iterations")
    by_iterations.set_title(f"(a) FID vs training iterations, {result['at_steps']} sampling steps", fontsize=10)
    by_steps.set_xlabel("sampling steps")
    by_steps.set_xscale("log")
    steps = sorted({r["steps"] for p, _, r in result["points"] if p == "steps"})
    if steps:
        # Ticks at the step counts that were sampled, not at powers of ten that may fall between them.
        by_steps.set_xticks(steps, [str(s) for s in steps])
        by_steps.minorticks_off()
    iterations = sorted({r["iterations"] for p, _, r in result["points"] if p == "iterations"})
    if 0 < len(iterations) <= 12:
        by_iterations.set_xticks(iterations, [f"{i // 1000}K" if i >= 10000 else str(i) for i in iterations])
    final = "latest checkpoint" if result["at_iterations"] is None else f"{result['at_iterations']} iterations"
    by_steps.set_title(f"(b) FID vs sampling steps, {final}", fontsize=10)
    for axes in (by_iterations, by_steps):
        axes.set_ylabel("FID")
        axes.grid(True, alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize=8)
    figure.suptitle(f"{result['dataset']}", fontsize=10)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run(results=DEFAULT_RESULTS, out=None, dataset=None, sampler=None, num_samples=None, at_steps=None,
        at_iterations=None):
    result = fid_curves(read_results(results), dataset, sampler, num_samples, at_steps, at_iterations)
    return write_fid_curves(result, output_prefix(out, "fid_curves"))
