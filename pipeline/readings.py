"""The numbers a report states, read from what the stages wrote, and the sentences that state them.

Every sentence is built from a number computed here and says which way it goes,
for every weighting against constant weighting, so that a report never claims
more than its tables show. Inputs are the results registry (FID, KID and their
uncertainties), the MSE-step CSV (noise and image error per t) and the colour
CSV (per-image mean colours and the share of rough samples at each T).
"""

import dataclasses

import numpy as np

from analyses.color_shift import ROUGH_PERCENTILE
from evaluations.registry import CELL_FIELDS, latest

BASELINE = "constant"
INITIAL = "Initial"

# Bands of t at which the paper's Fig. 4 reads the difference between weightings.
BANDS = (("t < 200", 0, 200), ("200 <= t < 600", 200, 600), ("t >= 600", 600, None))
NOISY_BAND = "t >= 600"
CLEAN_BAND = "t < 200"

# A difference counts as resolved when it exceeds this many standard deviations of the difference.
RESOLVED_SIGMAS = 2.0


def _in_band(t, low, high):
    return t >= low and (high is None or t < high)


def band_means(rows, column):
    """{(curve, band): mean of `column` over the t of the band} from the MSE-step CSV rows."""
    sums = {}
    for row in rows:
        t = int(row["t"])
        for band, low, high in BANDS:
            if _in_band(t, low, high):
                total, count = sums.get((row["curve"], band), (0.0, 0))
                sums[(row["curve"], band)] = (total + float(row[column]), count + 1)
    return {key: total / count for key, (total, count) in sums.items()}


def relative_change(value, base):
    return None if value is None or base in (None, 0) else 100.0 * (value / base - 1.0)


def describe_change(percent):
    """'12% lower' / '3% higher' / 'equal'."""
    if percent is None:
        return "not measured"
    if abs(percent) < 0.5:
        return "equal"
    return f"{abs(percent):.0f}% {'lower' if percent < 0 else 'higher'}"


@dataclasses.dataclass
class ColourRow:
    run: str
    steps: int | None
    spread: float
    fd: float
    pixel_std: float
    rough_fraction: float | None  # None in a colour CSV written before the column existed


def colour_rows(rows):
    """The colour CSV as ColourRows; the training images are the row whose run is 'reference'."""
    out = []
    for row in rows:
        std = np.mean([float(row[f"std_{c}"]) for c in "rgb"])
        steps = int(row["steps"]) if row.get("steps") not in (None, "") else None
        rough = float(row["rough_fraction"]) if row.get("rough_fraction") not in (None, "") else None
        out.append(ColourRow(row["checkpoint"], steps, float(row["mean_spread"]), float(row["spatial_mean_fd"]), std, rough))
    return out


def fid_cells(records, dataset, iterations=None):
    """{(run name, sampler, steps): newest record with an FID} for the dataset, at one checkpoint if given."""
    from .plan import Run

    cells = {}
    for cell, record in latest([r for r in records if r.get("dataset") == dataset]).items():
        field = dict(zip(CELL_FIELDS, cell))
        if iterations is None or field["iterations"] == iterations:
            cells[(Run.of_cell(field).name, field["sampler"], field["steps"])] = record
    return cells


def _resolution(value, base, std, base_std):
    """' (resolved)', ' (within the uncertainty)', or '' without both standard deviations."""
    if None in (value, base, std, base_std):
        return ""
    resolved = abs(value - base) > RESOLVED_SIGMAS * float(np.hypot(std, base_std))
    return " (resolved)" if resolved else " (within the uncertainty)"


def _reversals(by, steps, fd, others):
    """A sentence naming the T at which a weighting's Frechet distance lies on the other side of constant's
    than its average over T does ('' when every T agrees with the average)."""
    sentences = []
    for s in steps:
        base = by.get((BASELINE, s))
        flipped = [r for r in others if base and (r, s) in by and r in fd
                   and np.sign(by[(r, s)].fd - base.fd) * np.sign(fd[r] - fd[BASELINE]) < 0]
        if flipped:
            sentences.append(f"at T={s} " + ", ".join(f"{r} ({by[(r, s)].fd:.1f})" for r in flipped)
                             + f" {'is' if len(flipped) == 1 else 'are'} on the other side of constant ({base.fd:.1f})")
    return f" Not at every T: {'; '.join(sentences)}." if sentences else ""


def _colour_lines(runs, colour, data_spread):
    others = [r for r in runs if r != BASELINE]
    steps = sorted({c.steps for c in colour if c.steps is not None})
    by = {(c.run, c.steps): c for c in colour}
    fd = {r: np.mean([by[(r, s)].fd for s in steps if (r, s) in by]) for r in runs if any((r, s) in by for s in steps)}
    spread = {r: [by[(r, s)].spread for s in steps if (r, s) in by] for r in runs}
    if BASELINE not in fd:
        return []
    parts = [f"{r} {describe_change(relative_change(fd[r], fd[BASELINE]))} ({fd[r]:.1f})" for r in others if r in fd]
    lines = [
        f"**Colour shift.** Averaged over T = {', '.join(map(str, steps))}, the Frechet distance between the "
        f"per-image mean colours of the samples and of the training images is {fd[BASELINE]:.1f} for constant "
        f"weighting; against it: {'; '.join(parts)}.{_reversals(by, steps, fd, others)} The spread of per-image "
        f"mean colour is {min(spread[BASELINE]):.0f}-{max(spread[BASELINE]):.0f} for constant and "
        + "; ".join(f"{min(spread[r]):.0f}-{max(spread[r]):.0f} for {r}" for r in others if spread.get(r))
        + f", against {data_spread:.0f} for the training images."
    ]
    if all(c.rough_fraction is not None for c in colour):
        rough = [f"{r} " + "/".join(f"{100 * by[(r, s)].rough_fraction:.0f}" for s in steps if (r, s) in by) + "%"
                 for r in runs if spread.get(r)]
        last = steps[-1]
        rough_change = [
            f"{r} {describe_change(relative_change(by[(r, last)].rough_fraction, by[(BASELINE, last)].rough_fraction))}"
            for r in others if (r, last) in by and (BASELINE, last) in by
        ]
        lines.append(
            f"**Grain.** The share of samples rougher (mean absolute difference of neighbouring pixels) than "
            f"{ROUGH_PERCENTILE:g}% of the training images, at T = {'/'.join(map(str, steps))}: {'; '.join(rough)}. "
            f"At T={last}, against constant weighting: {'; '.join(rough_change)}."
        )
    return lines


def headline(runs, colour, mse_means, x0_means, fid, data_spread):
    """Bullet sentences, one per reading, each stating its direction for every weighting against constant."""
    others = [r for r in runs if r != BASELINE]
    lines = _colour_lines(runs, colour, data_spread) if colour else []
    base_noisy = x0_means.get((BASELINE, NOISY_BAND))
    initial = mse_means.get((INITIAL, NOISY_BAND))
    # A diffusion with fewer steps than the bands assume (a toy T) has no noisy band to read.
    if mse_means and x0_means and None not in (base_noisy, initial, mse_means.get((BASELINE, CLEAN_BAND))):
        parts = [
            f"{r} {describe_change(relative_change(x0_means.get((r, NOISY_BAND)), base_noisy))}" for r in others
        ]
        lines.append(
            f"**Image error at noisy steps (Eq. 6).** Over {NOISY_BAND} the MSE of the one-step estimate of x0 is "
            f"{base_noisy:.4f} for constant weighting; against it: {'; '.join(parts)}."
        )
        clean = [f"{r} {describe_change(relative_change(mse_means.get((r, CLEAN_BAND)), mse_means.get((BASELINE, CLEAN_BAND))))}"
                 for r in others]
        noisy = [f"{r} {describe_change(relative_change(mse_means.get((r, NOISY_BAND)), mse_means.get((BASELINE, NOISY_BAND))))}"
                 for r in others]
        ratio = [f"{r} {mse_means[(r, NOISY_BAND)] / initial:.2f}x" for r in runs if (r, NOISY_BAND) in mse_means]
        lines.append(
            f"**The noise-error trade.** Against constant weighting, the noise MSE over {NOISY_BAND} is "
            f"{'; '.join(noisy)}, and over {CLEAN_BAND} it is {'; '.join(clean)}. At {NOISY_BAND} every model's noise "
            f"MSE relative to the 'Initial' input error ({initial:.4f}) is: {', '.join(ratio)}."
        )
    for (sampler, steps), cells in sorted(_by_setting(fid).items()):
        base = cells.get(BASELINE)
        if base is None:
            continue
        parts = []
        for r in others:
            cell = cells.get(r)
            if cell is None:
                continue
            fid_text = f"FID {describe_change(relative_change(cell['fid'], base['fid']))}"
            fid_text += _resolution(cell["fid"], base["fid"], cell.get("fid_std"), base.get("fid_std"))
            if cell.get("kid") is not None and base.get("kid") is not None:
                fid_text += f", KID {describe_change(relative_change(cell['kid'], base['kid']))}"
                fid_text += _resolution(cell["kid"], base["kid"], cell.get("kid_std"), base.get("kid_std"))
            parts.append(f"{r} {fid_text}")
        lines.append(
            f"**FID and KID** ({sampler.upper()} T={steps}, {base['num_samples']} samples; lower is better). Against "
            f"constant weighting: {'; '.join(parts)}. A difference is called resolved when it exceeds "
            f"{RESOLVED_SIGMAS:g} standard deviations of the difference (FID: bootstrap over samples; KID: spread "
            "over subsets)."
        )
    return lines


def _by_setting(fid):
    settings = {}
    for (run, sampler, steps), record in fid.items():
        settings.setdefault((sampler, steps), {})[run] = record
    return settings
