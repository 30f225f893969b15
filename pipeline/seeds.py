"""How far a second training seed moves a number, and the rule for "resolved" that counts it.

One run's FID has two sources of spread: the samples (the bootstrap over the sample set, which the
registry records per cell) and the training itself (initial weights, noise, data order), which only
repeating the training with other seeds measures. Where a plan trains a weighting from several seeds
(`runs = ["debias", "debias#seed1", ...]`), the uncertainty of one run is the larger of the seed
standard deviation and the bootstrap's, and the report says which one it used.

The comparisons are paired by seed: every weighting with seed s starts from the same initial weights
and sees the same noise and data order, so the difference per seed is the weighting's effect on that
training. The mean difference over n seeds is resolved when it exceeds `RESOLVED_SIGMAS` standard
deviations of a difference of two means, hypot(u_a, u_b) / sqrt(n), where u is a run's uncertainty.
A single-seed comparison (what a study with one seed per weighting makes) needs hypot(u_a, u_b).
"""

import dataclasses

import numpy as np

from .readings import BASELINE, RESOLVED_SIGMAS

METRICS = (("fid", "FID", 1.0, 1), ("kid", "KID x 1000", 1000.0, 2))


@dataclasses.dataclass
class Spread:
    """One weighting's metric over its seeds at one sampler setting."""

    values: dict  # {seed: value}
    bootstrap: float | None  # mean over seeds of the per-run bootstrap (or subset) standard deviation

    @property
    def mean(self):
        return float(np.mean(list(self.values.values())))

    @property
    def seed_std(self):
        return float(np.std(list(self.values.values()), ddof=1)) if len(self.values) > 1 else None

    @property
    def uncertainty(self):
        """(the larger of the seed and the bootstrap standard deviation, which of the two it is)."""
        candidates = [(v, name) for v, name in ((self.seed_std, "seed"), (self.bootstrap, "bootstrap")) if v is not None]
        return max(candidates) if candidates else (None, None)


def seed_groups(runs):
    """{name of the seed-0 run: [runs of the same model, by seed]} for models trained from two seeds or more."""
    groups = {}
    for run in runs:
        groups.setdefault(run.first_seed.name, []).append(run)
    return {name: sorted(members, key=lambda r: r.seed) for name, members in groups.items() if len(members) > 1}


def spreads(fid_cells, groups, metric):
    """{(model, sampler, steps): Spread} of `metric` over each group's seeds, where every seed was evaluated."""
    settings = sorted({(sampler, steps) for _, sampler, steps in fid_cells}, key=lambda st: (str(st[0]), st[1] or 0))
    out = {}
    for model, members in groups.items():
        for sampler, steps in settings:
            records = {run.seed: fid_cells.get((run.name, sampler, steps)) for run in members}
            if any(r is None or r.get(metric) is None for r in records.values()):
                continue
            stds = [r.get(f"{metric}_std") for r in records.values()]
            out[(model, sampler, steps)] = Spread(
                {seed: float(r[metric]) for seed, r in records.items()},
                None if None in stds else float(np.mean(stds)),
            )
    return out


def _fmt(value, scale, digits):
    return "—" if value is None else f"{scale * value:.{digits}f}"


def seed_table(fid_cells, groups):
    """Rows (sampler, steps, metric, model): the value per seed, the mean, both spreads and the one used."""
    seeds = sorted({run.seed for members in groups.values() for run in members})
    lines = [
        "| sampler | steps | metric | weighting | " + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | seed std | bootstrap std | uncertainty used |",
        "|---|---:|---|---|" + "---:|" * (len(seeds) + 3) + "---|",
    ]
    for metric, label, scale, digits in METRICS:
        for (model, sampler, steps), spread in sorted(spreads(fid_cells, groups, metric).items(),
                                                      key=lambda kv: (str(kv[0][1]), kv[0][2], list(groups).index(kv[0][0]))):
            used, which = spread.uncertainty
            lines.append(
                f"| {sampler} | {steps} | {label} | {model} | "
                + " | ".join(_fmt(spread.values.get(s), scale, digits) for s in seeds)
                + f" | {_fmt(spread.mean, scale, digits)} | {_fmt(spread.seed_std, scale, digits)} | "
                f"{_fmt(spread.bootstrap, scale, digits)} | {which} |"
            )
    return "\n".join(lines)


def _verdict(delta, sigma):
    word = "lower" if delta < 0 else "higher"
    return f"{word} ({'resolved' if abs(delta) > RESOLVED_SIGMAS * sigma else 'within the uncertainty'})"


def seed_lines(fid_cells, groups):
    """Sentences: per setting, how the seed spread compares with the bootstrap's, and each weighting against
    constant by the mean over seeds (paired by seed) and by seed 0 alone, both under the seed-aware rule."""
    lines = []
    for metric, label, scale, digits in METRICS:
        table = spreads(fid_cells, groups, metric)
        for sampler, steps in sorted({(s, t) for _, s, t in table}, key=lambda st: (str(st[0]), st[1])):
            base = table.get((BASELINE, sampler, steps))
            here = {model: spread for (model, s, t), spread in table.items() if (s, t) == (sampler, steps)}
            larger = [m for m, sp in here.items() if sp.uncertainty[1] == "seed"]
            spread_text = "; ".join(
                f"{m} {_fmt(sp.seed_std, scale, digits)} against {_fmt(sp.bootstrap, scale, digits)}" for m, sp in here.items()
            )
            head = (f"**Seed spread, {label} ({sampler.upper()} T={steps}).** Standard deviation over seeds against the "
                    f"bootstrap's: {spread_text}. The seed spread is the larger for {len(larger)} of {len(here)} weightings"
                    + (f" ({', '.join(larger)})" if larger else "") + ".")
            lines.append(head)
            if base is None:
                continue
            for model, spread in here.items():
                if model == BASELINE or set(spread.values) != set(base.values):
                    continue
                pairs = {s: spread.values[s] - base.values[s] for s in spread.values}
                n = len(pairs)
                per_run = float(np.hypot(spread.uncertainty[0], base.uncertainty[0]))
                mean_delta = float(np.mean(list(pairs.values())))
                signs = {np.sign(d) for d in pairs.values()}
                first = min(pairs)
                bootstrap_only = None if None in (spread.bootstrap, base.bootstrap) else float(np.hypot(spread.bootstrap, base.bootstrap))
                single = f"seed {first} alone: {scale * pairs[first]:+.{digits}f}, {_verdict(pairs[first], per_run)}"
                if bootstrap_only is not None:
                    single += f"; by the bootstrap alone it would be {_verdict(pairs[first], bootstrap_only)}"
                lines.append(
                    f"{model} against constant, {label} ({sampler.upper()} T={steps}; {model} minus constant, lower is "
                    f"better): per seed " + ", ".join(f"{scale * d:+.{digits}f}" for d in pairs.values())
                    + f"; mean over {n} seeds {scale * mean_delta:+.{digits}f}, {_verdict(mean_delta, per_run / np.sqrt(n))}; "
                    + ("the same sign at every seed" if len(signs) == 1 else "the sign changes between seeds")
                    + f"; {single}."
                )
    return lines
