"""FID over training iterations (the paper's Fig. 7a) as a report states it: a table and sentences.

Every sentence says, for each weighting against constant weighting, which way the
difference goes at each checkpoint and whether it is resolved (the rule of
`readings.RESOLVED_SIGMAS`), where the order between the two changes, and how
far each weighting's FID moved from the first checkpoint to the last.
"""

import dataclasses

import numpy as np

from evaluations.registry import CELL_FIELDS, latest
from guided_diffusion.resample import UNIFORM

from .readings import BASELINE, RESOLVED_SIGMAS


def curve_cells(records, dataset, last=None):
    """{(sampler, steps): {run name: {iterations: newest record with an FID}}} for the dataset.

    A setting is a curve when it is evaluated at more than one checkpoint, or at one before the
    plan's `last` (a study still under way).
    """
    from .plan import Run

    curves = {}
    for cell, record in latest([r for r in records if r.get("dataset") == dataset]).items():
        field = dict(zip(CELL_FIELDS, cell))
        if field["iterations"] is None:
            continue
        by_run = curves.setdefault((field["sampler"], field["steps"]), {})
        by_run.setdefault(Run.of_cell(field).name, {})[int(field["iterations"])] = record
    return {
        setting: runs for setting, runs in curves.items()
        if max(len(points) for points in runs.values()) > 1
        or (last is not None and min(min(points) for points in runs.values()) < last)
    }


def progress_line(curves, runs, last):
    """A sentence saying how far a plan's checkpoints are evaluated, or '' when the last one is."""
    complete = [
        it for it in sorted({it for by_run in curves.values() for points in by_run.values() for it in points})
        if all(it in by_run.get(run, {}) for by_run in curves.values() for run in runs)
    ]
    if complete and complete[-1] >= last:
        return ""
    reached = f"every weighting and sampler up to {complete[-1]:,} iterations" if complete else "no checkpoint yet"
    return (f"**In progress.** Results cover {reached}; the plan goes to {last:,}. Running it again continues "
            "where it stopped, and this report is rewritten from what exists.")


def _difference(cell, base, metric):
    """(value - base, its standard deviation or None) for `metric` in fid | kid."""
    std, base_std = cell.get(f"{metric}_std"), base.get(f"{metric}_std")
    sigma = None if None in (std, base_std) else float(np.hypot(std, base_std))
    return cell[metric] - base[metric], sigma


def _verdict(delta, sigma):
    """'lower' / 'higher', with '(resolved)' or '(within the uncertainty)' when the spread is known."""
    word = "lower" if delta < 0 else "higher"
    if sigma is None:
        return word
    return f"{word} ({'resolved' if abs(delta) > RESOLVED_SIGMAS * sigma else 'within the uncertainty'})"


def curve_table(points_by_run, runs):
    """Rows: checkpoints; columns: runs; FID ± bootstrap std (KID x 1000 ± spread below it)."""
    iterations = sorted({it for points in points_by_run.values() for it in points})
    lines = ["| iterations | metric | " + " | ".join(runs) + " |", "|---:|---|" + "---:|" * len(runs)]
    for it in iterations:
        row = [points_by_run.get(run, {}).get(it) for run in runs]
        best = min((r["fid"] for r in row if r is not None), default=None)

        def fid_text(record):
            if record is None:
                return "—"
            text = f"{record['fid']:.1f}" + ("" if record.get("fid_std") is None else f" ± {record['fid_std']:.1f}")
            return f"**{text}**" if record["fid"] == best else text

        lines.append(f"| {it:,} | FID | " + " | ".join(fid_text(r) for r in row) + " |")
        if any(r is not None and r.get("kid") is not None for r in row):
            kids = ["—" if r is None or r.get("kid") is None else
                    f"{1000 * r['kid']:.1f}" + ("" if r.get("kid_std") is None else f" ± {1000 * r['kid_std']:.1f}")
                    for r in row]
            lines.append(f"| {it:,} | KID x 1000 | " + " | ".join(kids) + " |")
    return "\n".join(lines)


def curve_lines(sampler, steps, points_by_run, runs):
    """Sentences for one curve setting: each weighting against constant at every checkpoint (a run with its
    own timestep sampler also against its weighting drawn uniformly), and progress."""
    from .plan import Run

    base_points = points_by_run.get(BASELINE, {})
    iterations = sorted(base_points)
    if len(iterations) < 2:
        return []
    first, last = iterations[0], iterations[-1]
    label = f"{sampler.upper()} T={steps}"
    progress = [
        f"{run} {points[first]['fid']:.1f} → {points[last]['fid']:.1f} ({points[last]['fid'] - points[first]['fid']:+.1f})"
        for run in runs
        for points in [points_by_run.get(run, {})]
        if first in points and last in points
    ]
    lines = [f"**FID over training ({label}).** From {first:,} to {last:,} iterations: {'; '.join(progress)}."]
    for run in runs:
        if run == BASELINE:
            continue
        # A run with its own timestep sampler is also set against the same weighting drawn uniformly.
        uniform_twin = dataclasses.replace(Run.parse(run, "curve"), schedule_sampler=UNIFORM).name
        for base in dict.fromkeys([BASELINE, uniform_twin]):
            if base != run and base in points_by_run:
                sentence = _comparison(run, points_by_run.get(run, {}), base, points_by_run[base])
                if sentence:
                    lines.append(sentence)
    return lines


def _comparison(run, points, base, base_points):
    """One run against a base run at every checkpoint both have: the differences, crossings and KID."""
    shared = [it for it in sorted(base_points) if it in points]
    if not shared:
        return None
    per_checkpoint = []
    signs = []
    for it in shared:
        delta, sigma = _difference(points[it], base_points[it], "fid")
        signs.append(np.sign(delta))
        per_checkpoint.append(f"{it:,}: {delta:+.1f}, {_verdict(delta, sigma)}")
    crossings = [
        f"between {shared[i - 1]:,} and {shared[i]:,} iterations {run} moves "
        + ("ahead of" if signs[i] < 0 else "behind")
        + f" {base}"
        for i in range(1, len(shared))
        if signs[i] != signs[i - 1] and signs[i] != 0
    ]
    sentence = (f"{run} against {base}, FID difference ({run} minus {base}; lower is better) at each "
                f"checkpoint: {'; '.join(per_checkpoint)}.")
    resolved = any("(resolved)" in text for text in per_checkpoint)
    if crossings:
        sentence += " The order changes: " + "; ".join(crossings) + "."
    elif len(shared) == 1:
        sentence += f" {run} is {'ahead of' if signs[-1] < 0 else 'behind'} {base} at {shared[0]:,}."
    else:
        sentence += f" {run}'s FID is {'below' if signs[-1] < 0 else 'above'} {base}'s at every checkpoint"
        sentence += "." if resolved else ", no difference resolved."
    kid_last = points[shared[-1]].get("kid"), base_points[shared[-1]].get("kid")
    if None not in kid_last:
        delta, sigma = _difference(points[shared[-1]], base_points[shared[-1]], "kid")
        sentence += f" KID at {shared[-1]:,}: {_verdict(delta, sigma)}."
    return sentence
