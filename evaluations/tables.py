"""Tables 1-4 of the paper regenerated from the results registry, our numbers beside the published ones.

A cell reads `ours (paper, ours - paper)`, e.g. `6.41 (6.354, +0.06)`; with
no matching result it reads `— (6.354)`, and `—` alone where the paper has no
number either. A cell whose evaluation ran but could not compute the
cell's metric (IS without Inception weights that have logits, sFID against
old reference statistics) reads `n/a[1] (8.13)`, with note [1] below the table
giving the reason the registry recorded. Cells the paper reports from other work (P2*, Table 3's prior
models) show the published value only. When several registry lines match a
cell, the newest (by date, then by position in the file) that has the
cell's metric wins; when those lines evaluated different checkpoints (two trainings
written into one registry), the cell carries a note naming them. Tables 1, 2 and 4 take models trained for the paper's
500K iterations unless `--iterations` says otherwise; Table 3 has its own
iteration rows. Results outside the paper's grid (other datasets, samplers,
step counts or training lengths) go to an extra table, so nothing recorded
is hidden.

    python -m evaluations.tables [--results results/results.jsonl] [--out_dir results/tables] [--format md,tex,csv]
"""

import argparse
import csv
import io
import logging
import os
import sys
from dataclasses import dataclass, field

from guided_diffusion.run.atomic import atomic_write_text

from . import published
from .errors import EvaluationError
from .registry import CELL_FIELDS, DEFAULT_RESULTS, read_results, recency, record_value
from guided_diffusion.run.command_line import ArgumentParser

log = logging.getLogger(__name__)

FORMATS = ("md", "tex", "csv")
DEFAULT_OUT_DIR = os.path.join("results", "tables")
NO_RESULT = "—"
NOT_COMPUTED = "n/a"
METRIC_LABELS = {"fid": "FID", "sfid": "sFID", "is": "IS"}
WEIGHTINGS = ("constant", "p2", "min_snr", "debias")
PAPER_SAMPLER = "ddpm"


@dataclass
class Cell:
    """One value of a table: published text, and the registry selector and metric for ours (None = published only)."""

    published: str = None
    query: dict = None
    metric: str = "fid"
    ours: float = None
    # Footnote number of the reason the metric is missing, when the evaluation ran without it.
    note: int = None

    @property
    def difference(self):
        if self.ours is None or self.published is None:
            return None
        return self.ours - float(self.published)

    def text(self):
        if self.query is None:
            return self.published if self.published is not None else NO_RESULT
        if self.ours is None:
            mark = NO_RESULT if self.note is None else f"{NOT_COMPUTED}[{self.note}]"
            return f"{mark} ({self.published})" if self.published is not None else mark
        ours = f"{self.ours:.2f}" + ("" if self.note is None else f"[{self.note}]")
        if self.published is None:
            return ours
        return f"{ours} ({self.published}, {self.difference:+.2f})"


@dataclass
class Table:
    name: str
    title: str
    caption: str
    header: list
    label_columns: int
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def note_number(self, text):
        """1-based number of footnote `text`, added on first use."""
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def cells(self):
        for row in self.rows:
            yield from (value for value in row[self.label_columns :] if isinstance(value, Cell))


def _normal(value):
    if isinstance(value, str):
        return value.strip().lower().replace("-", "").replace("_", "")
    return value


def matches(record, query):
    for key, wanted in query.items():
        value = record_value(record, key)
        if isinstance(wanted, int):
            try:
                if value is None or int(value) != wanted:
                    return False
            except (TypeError, ValueError):
                return False
        elif _normal(value) != _normal(wanted):
            return False
    return True


def newest_record(records, query, metric):
    candidates = [r for r in records if r.get(metric) is not None and matches(r, query)]
    return max(candidates, key=recency) if candidates else None


def newest_value(records, query, metric):
    record = newest_record(records, query, metric)
    return None if record is None else float(record[metric])


def rival_checkpoints(records, chosen, metric):
    """Checkpoint hashes of the other lines with `metric` for the cell of `chosen` (same run, sampler, steps,
    samples and training length) that evaluated a different model: two trainings written into one
    registry, of which a table can show only one."""
    same_cell = {k: record_value(chosen, k) for k in CELL_FIELDS}
    hashes = {
        r["checkpoint_hash"] for r in records
        if r.get(metric) is not None and r.get("checkpoint_hash") and r.get("checkpoint_hash") != chosen.get("checkpoint_hash")
        and all(record_value(r, k) == v for k, v in same_cell.items())
    }
    return sorted(hashes)


def _rivals_note(table, chosen, rivals):
    shown = str(chosen.get("checkpoint_hash") or "unknown")[:12]
    others = ", ".join(h[:12] for h in rivals)
    return table.note_number(
        f"other checkpoints ({others}) were evaluated for this cell too; the newest line (checkpoint {shown}, "
        f"{chosen.get('date')}) is shown"
    )


def missing_reason(records, query, metric):
    """Why the newest matching evaluation that recorded `metric` as missing could not compute it, or None."""
    candidates = [r for r in records if isinstance(r.get("missing"), dict) and metric in r["missing"] and matches(r, query)]
    if not candidates:
        return None
    return str(max(candidates, key=recency)["missing"][metric])


def _query(dataset, steps, weight_schedule, iterations, pred="eps"):
    # The paper trains every model with uniform timesteps.
    query = {"dataset": dataset, "steps": steps, "weight_schedule": weight_schedule, "pred": pred,
             "schedule_sampler": "uniform"}
    query["sampler"] = PAPER_SAMPLER
    if iterations is not None:
        query["iterations"] = iterations
    return query


def _training_note(iterations):
    return "models at any training length" if iterations is None else f"models at {iterations // 1000}K iterations"


def table1(iterations):
    header = ["Dataset", "Steps T", "Constant", "P2", "P2* (reported)", "Min-SNR", "Ours (debias)"]
    table = Table(
        "table1",
        "Table 1: unconditional generation, FID (lower is better)",
        f"DDPM sampling with T respaced steps, eps-prediction, {_training_note(iterations)}. "
        "P2* is the P2 paper's own report, for reference only.",
        header,
        2,
    )
    for (dataset, steps), values in published.TABLE1_FID.items():
        row = [published.DATASET_LABELS[dataset], str(steps)]
        for column in ("constant", "p2", "p2_reported", "min_snr", "debias"):
            if column == "p2_reported":
                row.append(Cell(published=values[column]))
            else:
                row.append(Cell(published=values[column], query=_query(dataset, steps, column, iterations)))
        table.rows.append(row)
    return table


def table2(iterations):
    header = ["Dataset", "Steps T", "Metric", "Constant", "P2", "Min-SNR", "Ours (debias)"]
    table = Table(
        "table2",
        "Table 2: class-conditional generation, FID and sFID (lower is better) and IS (higher is better)",
        f"DDPM sampling with T respaced steps, eps-prediction, {_training_note(iterations)}. "
        "sFID is ADM's spatial FID; the paper reports none.",
        header,
        3,
    )
    for (dataset, steps), metrics in published.TABLE2.items():
        for metric in ("fid", "sfid", "is"):
            row = [published.DATASET_LABELS[dataset], str(steps), METRIC_LABELS[metric]]
            for weighting in WEIGHTINGS:
                query = _query(dataset, steps, weighting, iterations)
                paper = metrics.get(metric, {}).get(weighting)
                row.append(Cell(published=paper, query=query, metric=metric))
            table.rows.append(row)
    return table


def table3():
    table = Table(
        "table3",
        "Table 3: FFHQ against prior generative models, FID (lower is better)",
        f"Our rows: debias weighting, eps-prediction, DDPM with T={published.TABLE3_STEPS} steps; "
        "the other rows are the published numbers.",
        ["Dataset", "Method", "Type", "FID"],
        3,
    )
    for entry in published.TABLE3_FFHQ:
        query = None
        if entry["iterations"] is not None:
            query = _query("ffhq", published.TABLE3_STEPS, "debias", entry["iterations"])
        table.rows.append(["FFHQ", entry["method"], entry["type"], Cell(published=entry["fid"], query=query)])
    return table


def table4(iterations):
    table = Table(
        "table4",
        "Table 4: prediction targets on CelebA-HQ, T=100 steps, FID and sFID (lower is better)",
        f"DDPM sampling with {published.TABLE4_STEPS} respaced steps, {_training_note(iterations)}. "
        "sFID is ADM's spatial FID; the paper reports none.",
        ["Metric"] + [entry["label"] for entry in published.TABLE4_CELEBAHQ],
        1,
    )
    for metric in ("fid", "sfid"):
        row = [METRIC_LABELS[metric]]
        for entry in published.TABLE4_CELEBAHQ:
            query = _query("celebahq", published.TABLE4_STEPS, entry["weight_schedule"], iterations, pred=entry["pred"])
            row.append(Cell(published=entry["fid"] if metric == "fid" else None, query=query, metric=metric))
        table.rows.append(row)
    return table


def _sort_key(value):
    return (value is None, value if value is not None else 0)


def other_results_table(records, paper_tables):
    """FID of every (setting, weighting) whose records match no cell of the paper's tables."""
    queries = [cell.query for table in paper_tables for cell in table.cells() if cell.query is not None]
    outside = [r for r in records if r.get("fid") is not None and not any(matches(r, q) for q in queries)]
    # A column per weighting, and per weighting with a non-uniform timestep sampler ("debias+loss-weight").
    runs = [(w, "uniform") for w in WEIGHTINGS] + sorted(
        {(str(r.get("weight_schedule")), str(record_value(r, "schedule_sampler"))) for r in outside}
        - {(w, "uniform") for w in WEIGHTINGS}
        - {("None", "uniform")}
    )
    settings = sorted(
        {tuple(record_value(r, k) for k in ("dataset", "pred", "sampler", "iterations", "steps")) for r in outside},
        key=lambda s: (str(s[0]), str(s[1]), str(s[2]), _sort_key(s[3]), _sort_key(-s[4] if s[4] is not None else None)),
    )
    labels = [published.WEIGHTING_LABELS.get(w, w) + ("" if t == "uniform" else f"+{t}") for w, t in runs]
    table = Table(
        "table_other",
        "Other results: settings outside the paper's tables, FID (lower is better)",
        "Newest registry line per setting and weighting; no published counterpart.",
        ["Dataset", "Pred", "Sampler", "Iterations", "Steps"] + labels,
        5,
    )
    for dataset, pred, sampler, iterations, steps in settings:
        row = [str(v) if v is not None else NO_RESULT for v in (dataset, pred, sampler, iterations, steps)]
        for schedule, timesteps in runs:
            query = {"dataset": dataset, "pred": pred, "sampler": sampler, "weight_schedule": schedule,
                     "schedule_sampler": timesteps}
            chosen = [
                r
                for r in outside
                if matches(r, query) and r.get("iterations") == iterations and r.get("steps") == steps
            ]
            cell = Cell(query=query)
            if chosen:
                newest = max(chosen, key=recency)
                cell.ours = float(newest["fid"])
                rivals = rival_checkpoints(chosen, newest, "fid")
                if rivals:
                    cell.note = _rivals_note(table, newest, rivals)
            row.append(cell)
        table.rows.append(row)
    return table


def build_tables(records, iterations=published.PAPER_ITERATIONS):
    """Tables 1-4 and the table of other results, filled from `records` (iterations=None: any training length)."""
    tables = [table1(iterations), table2(iterations), table3(), table4(iterations)]
    for table in tables:
        for cell in table.cells():
            if cell.query is not None:
                chosen = newest_record(records, cell.query, cell.metric)
                cell.ours = None if chosen is None else float(chosen[cell.metric])
                rivals = [] if chosen is None else rival_checkpoints(records, chosen, cell.metric)
                if rivals:
                    cell.note = _rivals_note(table, chosen, rivals)
                reason = None if cell.ours is not None else missing_reason(records, cell.query, cell.metric)
                if reason is not None:
                    label = METRIC_LABELS.get(cell.metric, cell.metric)
                    cell.note = table.note_number(f"{label} not computed: {reason}")
    tables.append(other_results_table(records, tables))
    return tables


def _row_texts(row):
    return [value.text() if isinstance(value, Cell) else value for value in row]


def render_markdown(tables):
    lines = [
        "# Tables of *Unmasking Bias in Diffusion Model Training* (Yu et al., ECCV 2024), reproduced",
        "",
        f"Cells: ours (paper, ours - paper). {NO_RESULT}: no result in the registry. "
        f"{NOT_COMPUTED}[n]: evaluated, but the metric could not be computed; note [n] below the table says why.",
    ]
    for table in tables:
        lines += ["", f"## {table.title}", "", table.caption, ""]
        lines.append("| " + " | ".join(table.header) + " |")
        lines.append("|" + "|".join("---" for _ in table.header) + "|")
        if not table.rows:
            lines.append("| " + " | ".join([NO_RESULT] * len(table.header)) + " |")
        for row in table.rows:
            lines.append("| " + " | ".join(_row_texts(row)) + " |")
        if table.notes:
            lines.append("")
            lines += [f"[{number}] {text}  " for number, text in enumerate(table.notes, start=1)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIALS = {"&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "$": r"\$", "{": r"\{", "}": r"\}"}
_LATEX_WORDS = {"eps": r"$\epsilon$", "x0": r"$x_0$", "v": r"$v$", "T": r"$T$", NO_RESULT: "---"}


def _latex(text):
    escaped = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
    return " ".join(_LATEX_WORDS.get(word, word) for word in escaped.split(" "))


def render_latex(tables):
    blocks = ["% Generated by python -m evaluations.tables; needs \\usepackage{booktabs}."]
    for table in tables:
        columns = "l" * table.label_columns + "r" * (len(table.header) - table.label_columns)
        body = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_latex(table.title)}. {_latex(table.caption)}}}"]
        body += [f"\\begin{{tabular}}{{{columns}}}", r"\toprule", " & ".join(_latex(h) for h in table.header) + r" \\"]
        body.append(r"\midrule")
        for row in table.rows:
            body.append(" & ".join(_latex(text) for text in _row_texts(row)) + r" \\")
        body += [r"\bottomrule", r"\end{tabular}"]
        body += [f"\\par{{\\footnotesize [{n}] {_latex(text)}}}" for n, text in enumerate(table.notes, start=1)]
        body.append(r"\end{table}")
        blocks.append("\n".join(body))
    return "\n\n".join(blocks) + "\n"


def _number(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def render_csv(table):
    """One table as CSV: label columns, then per value column ours, paper and difference (paper only if never ours)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    value_columns = table.header[table.label_columns :]
    has_ours = [
        any(row[table.label_columns + index].query is not None for row in table.rows)
        for index in range(len(value_columns))
    ]
    header = list(table.header[: table.label_columns])
    for column, ours_column in zip(value_columns, has_ours):
        header += [column, f"{column} paper", f"{column} diff"] if ours_column else [f"{column} paper"]
    writer.writerow(header)
    for row in table.rows:
        values = list(row[: table.label_columns])
        for cell, ours_column in zip(row[table.label_columns :], has_ours):
            if ours_column:
                ours = _number(cell.ours) if cell.note is None else f"{NOT_COMPUTED}: {table.notes[cell.note - 1]}"
                values += [ours, cell.published or "", _number(cell.difference)]
            else:
                values.append(cell.published or "")
        writer.writerow(values)
    return out.getvalue()


def write_tables(tables, out_dir, formats=FORMATS):
    """Write table{1..4,_other}.{fmt} and tables.md / tables.tex into `out_dir`; returns the paths written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EvaluationError(f"--format {','.join(formats)!r}: unknown {unknown}; expected some of {','.join(FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def emit(name, text):
        path = os.path.join(out_dir, name)
        atomic_write_text(path, text)
        written.append(path)

    for table in tables:
        if "md" in formats:
            emit(f"{table.name}.md", render_markdown([table]))
        if "tex" in formats:
            emit(f"{table.name}.tex", render_latex([table]))
        if "csv" in formats:
            emit(f"{table.name}.csv", render_csv(table))
    if "md" in formats:
        emit("tables.md", render_markdown(tables))
    if "tex" in formats:
        emit("tables.tex", render_latex(tables))
    return written


def parse_iterations(text):
    if text.strip().lower() == "any":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of iterations or 'any', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"iterations must be >= 0, got {value}")
    return value


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="results registry (JSON lines)")
    parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR)
    parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated subset of md,tex,csv")
    parser.add_argument(
        "--iterations",
        type=parse_iterations,
        default=published.PAPER_ITERATIONS,
        help="training iterations of the results in Tables 1, 2, 4 (default: the paper's 500000; 'any')",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        if os.path.isfile(args.results):
            records = read_results(args.results)
        else:
            log.warning("no results registry at %s: the tables show the published numbers only", args.results)
            records = []
        tables = build_tables(records, args.iterations)
        written = write_tables(tables, args.out_dir, formats)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    filled = sum(cell.ours is not None for table in tables[:4] for cell in table.cells())
    print(f"{len(records)} results, {filled} paper cells filled; wrote {len(written)} files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
