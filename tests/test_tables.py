"""The results registry, the run record it reads, and Tables 1-4 against the paper's own numbers."""

import json
import os
import re

import pytest

from evaluations import published, tables
from evaluations.errors import EvaluationError
from evaluations.registry import RESULT_FIELDS, append_result, read_results
from evaluations.run_metadata import fields_from_run_files

DATA = os.path.join(os.path.dirname(__file__), "data")


# ---- run metadata and registry -----------------------------------------------------------------


def test_run_fields_are_the_run_record_that_sampling_wrote(tmp_path):
    sample_dir = tmp_path / "samples"
    (sample_dir / "batches").mkdir(parents=True)
    record = {"weight_schedule": "debias", "pred": "eps", "iterations": 500000, "sampler": "ddpm", "steps": 100,
              "checkpoint_hash": "f00"}
    (sample_dir / "sampling.json").write_text(json.dumps({"flags": {"weight_schedule": "constant"}, "run": {**record, "dataset": None}}))
    assert fields_from_run_files(str(sample_dir / "batches")) == record
    assert fields_from_run_files(str(sample_dir / "samples_4x8x8x3.npz")) == record
    assert fields_from_run_files(str(sample_dir)) == record
    assert fields_from_run_files(str(tmp_path / "elsewhere.npz")) == {}
    (sample_dir / "sampling.json").write_text("{not json")
    assert fields_from_run_files(str(sample_dir)) == {}


def test_registry_appends_lines_and_reports_bad_ones(tmp_path):
    path = str(tmp_path / "results" / "results.jsonl")
    base = dict.fromkeys(RESULT_FIELDS)
    append_result(path, {**base, "fid": 1.5, "date": "2026-01-01T00:00:00+00:00"})
    append_result(path, {**base, "fid": 2.5, "date": "2026-01-02T00:00:00+00:00"})
    assert [r["fid"] for r in read_results(path)] == [1.5, 2.5]
    with pytest.raises(EvaluationError, match="lacks fields"):
        append_result(path, {"fid": 3.0})
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(EvaluationError, match=r"results.jsonl:3 is not valid JSON"):
        read_results(path)


# ---- tables ------------------------------------------------------------------------------------


def test_tables_from_fixture_registry_match_golden_markdown(tmp_path):
    records = read_results(os.path.join(DATA, "results_fixture.jsonl"))
    with open(os.path.join(DATA, "tables_golden.md")) as f:
        golden = f.read()
    assert tables.render_markdown(tables.build_tables(records)) == golden

    argv = ["--results", os.path.join(DATA, "results_fixture.jsonl"), "--out_dir", str(tmp_path / "t")]
    assert tables.main(argv) == 0
    with open(tmp_path / "t" / "tables.md") as f:
        assert f.read() == golden
    names = sorted(os.listdir(tmp_path / "t"))
    assert names == sorted(
        [f"table{n}.{ext}" for n in ("1", "2", "3", "4", "_other") for ext in ("md", "tex", "csv")]
        + ["tables.md", "tables.tex"]
    )
    with open(tmp_path / "t" / "table2.csv") as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    header, cifar_sfid, cifar_is = rows[0], rows[2], rows[3]
    column = header.index("Ours (debias)")
    assert cifar_is[:3] == ["CIFAR-10", "1000", "IS"]
    assert cifar_is[column : column + 3] == ["8.2000", "8.13", "0.0700"]
    # sFID sits beside FID; an IS the evaluation could not compute shows its reason, not an empty cell.
    assert cifar_sfid[:4] == ["CIFAR-10", "1000", "sFID", "4.5000"]
    assert cifar_is[header.index("Constant")].startswith("n/a: IS not computed: no logits layer")
    with open(tmp_path / "t" / "table1.tex") as f:
        assert r"FFHQ & 1000 & 10.50 (10.864, -0.36)" in f.read()


def test_tables_iteration_filter(tmp_path):
    records = read_results(os.path.join(DATA, "results_fixture.jsonl"))
    any_length = tables.build_tables(records, iterations=None)
    ffhq_1000 = any_length[0].rows[0]
    # With any training length the newest FFHQ debias T=1000 line is the 1000K-iteration one.
    assert ffhq_1000[-1].ours == pytest.approx(5.1)
    assert tables.main(["--results", str(tmp_path / "absent.jsonl"), "--out_dir", str(tmp_path / "t"), "--format", "md"]) == 0
    assert sorted(os.listdir(tmp_path / "t")) == sorted(
        [f"table{n}.md" for n in ("1", "2", "3", "4", "_other")] + ["tables.md"]
    )
    bad_format = ["--results", str(tmp_path / "absent.jsonl"), "--out_dir", str(tmp_path / "u"), "--format", "md,pdf"]
    assert tables.main(bad_format) == 2 and not os.path.exists(tmp_path / "u")


# Tables 1-4 of the paper, transcribed from its text for this test alone (not from evaluations/published.py):
# dataset, T, then Constant, P2, P2*, Min-SNR, Ours ("-" where the paper prints none).
PAPER_TABLE1 = """
ffhq 1000 10.864 6.517 6.92 6.501 6.354
ffhq 500 11.027 6.792 6.97 6.873 6.706
ffhq 250 11.780 7.478 - 7.722 7.385
ffhq 100 15.671 10.855 - 11.391 10.815
ffhq 50 22.375 16.538 - 17.328 15.345
ffhq 20 41.270 34.399 - 34.652 29.380
celebahq 1000 9.374 7.258 6.91 6.322 5.980
celebahq 500 10.236 7.718 - 6.923 6.572
celebahq 250 11.097 8.433 - 8.016 7.604
celebahq 100 12.006 9.297 - 9.385 8.836
afhq_dog 1000 18.300 17.068 11.55 17.342 14.928
afhq_dog 500 18.606 17.474 - 17.639 14.946
afhq_dog 250 19.104 17.759 11.66 17.922 15.033
afhq_dog 100 20.446 18.344 - 18.421 15.821
metfaces 1000 41.418 14.204 - 30.876 9.168
metfaces 500 42.115 14.448 - 31.168 9.429
metfaces 250 42.324 14.738 36.80 31.340 9.849
metfaces 100 42.624 14.994 - 31.626 10.388
"""
# dataset, T, metric, Constant, P2, Min-SNR, Ours
PAPER_TABLE2 = """
cifar10 1000 fid 11.97 11.71 9.02 8.45
cifar10 1000 is 8.07 8.11 8.14 8.13
imagenet 100 fid 99.00 95.47 94.81 93.32
imagenet 100 is 11.96 13.02 13.21 13.37
"""
PAPER_TABLE3 = {"BigGAN": "12.4", "UNet GAN": "10.9", "StyleGAN": "4.16", "StyleGAN2": "3.73", "VQGAN": "9.6",
                "LDM": "4.98", "ADM (Baseline)": "10.86", "Ours (500k iterations)": "6.35",
                "Ours (1000k iterations)": "4.97"}
PAPER_TABLE4 = {("x0", "constant"): "12.3146", ("v", "constant"): "12.2773", ("eps", "constant"): "12.0064",
                ("eps", "p2"): "9.2972", ("eps", "min_snr"): "9.3851", ("eps", "debias"): "8.8363"}


def test_published_numbers_are_the_papers_tables():
    columns = ("constant", "p2", "p2_reported", "min_snr", "debias")
    for line in PAPER_TABLE1.strip().splitlines():
        dataset, steps, *values = line.split()
        expected = {c: (None if v == "-" else v) for c, v in zip(columns, values)}
        assert published.TABLE1_FID[(dataset, int(steps))] == expected, line
    assert len(published.TABLE1_FID) == len(PAPER_TABLE1.strip().splitlines())
    for line in PAPER_TABLE2.strip().splitlines():
        dataset, steps, metric, *values = line.split()
        assert published.TABLE2[(dataset, int(steps))][metric] == dict(zip(("constant", "p2", "min_snr", "debias"), values))
    assert {re.sub(r" \[\d+\]$", "", row["method"]): row["fid"] for row in published.TABLE3_FFHQ} == PAPER_TABLE3
    assert {(r["pred"], r["weight_schedule"]): r["fid"] for r in published.TABLE4_CELEBAHQ} == PAPER_TABLE4


def _line(**fields):
    record = dict.fromkeys(RESULT_FIELDS)
    record.update(dataset="ffhq", pred="eps", sampler="ddpm", steps=1000, iterations=500000, num_samples=50000)
    record.update(fields)
    return record


def test_importance_sampled_run_is_its_own_cell_and_never_replaces_the_papers(tmp_path):
    path = str(tmp_path / "results.jsonl")
    append_result(path, _line(weight_schedule="debias", fid=9.0, checkpoint_hash="a" * 64, date="2026-01-01T00:00:00+00:00"))
    # Newer, same weighting, importance-sampled t: another model, not a re-evaluation of the first.
    append_result(path, _line(weight_schedule="debias", schedule_sampler="loss-weight", fid=7.0,
                              checkpoint_hash="b" * 64, date="2026-01-02T00:00:00+00:00"))
    built = tables.build_tables(read_results(path))
    table1 = built[0]
    ffhq = next(row for row in table1.rows if row[0] == "FFHQ" and row[1] == "1000")
    debias = ffhq[table1.header.index("Ours (debias)")]
    assert debias.ours == 9.0 and debias.note is None
    other = built[-1]
    column = other.header.index("Ours (debias)+loss-weight")
    (row,) = other.rows
    assert row[column].ours == 7.0


def test_a_cell_evaluated_for_two_checkpoints_names_both(tmp_path):
    path = str(tmp_path / "results.jsonl")
    append_result(path, _line(weight_schedule="constant", fid=11.0, checkpoint_hash="1" * 64, date="2026-01-01T00:00:00+00:00"))
    append_result(path, _line(weight_schedule="constant", fid=10.0, checkpoint_hash="2" * 64, date="2026-01-02T00:00:00+00:00"))
    # A re-evaluation of the same checkpoint is not a rival.
    append_result(path, _line(weight_schedule="debias", fid=8.0, checkpoint_hash="3" * 64, date="2026-01-01T00:00:00+00:00"))
    append_result(path, _line(weight_schedule="debias", fid=8.1, checkpoint_hash="3" * 64, date="2026-01-02T00:00:00+00:00"))
    table1 = tables.build_tables(read_results(path))[0]
    ffhq = next(row for row in table1.rows if row[0] == "FFHQ" and row[1] == "1000")
    constant = ffhq[table1.header.index("Constant")]
    debias = ffhq[table1.header.index("Ours (debias)")]
    assert constant.ours == 10.0 and constant.text().startswith("10.00[1] (")
    assert table1.notes == [
        "other checkpoints (111111111111) were evaluated for this cell too; the newest line "
        "(checkpoint 222222222222, 2026-01-02T00:00:00+00:00) is shown"
    ]
    assert debias.ours == 8.1 and debias.note is None
    assert "[1]" in tables.render_markdown([table1])
