"""Every entry point refuses a bad command line in one line (never its usage), says what replaced a
removed flag, and reads negative numbers in scientific notation as values."""

import importlib
from pathlib import Path

import pytest

from guided_diffusion.run.command_line import ArgumentParser

REPO = Path(__file__).resolve().parents[1]
# Modules with main(argv) that a user runs; adm_worker is started by adm_baseline with its settings.
ENTRY_POINTS = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for folder in ("scripts", "scripts/analysis", "scripts/benchmarks", "evaluations", "datasets")
    for path in (REPO / folder).glob("*.py")
    if "\ndef main(argv" in path.read_text() and path.name != "adm_worker.py"
)


def refusal(module, argv, capsys):
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(module).main(argv)
    stderr = capsys.readouterr().err
    assert refused.value.code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "usage:" not in stderr, stderr
    assert lines[0].endswith("run with --help for the flags"), lines[0]
    return lines[0]


def test_the_entry_points_are_found():
    assert len(ENTRY_POINTS) >= 25
    assert {"scripts.image_train", "datasets.prepare", "evaluations.fid", "scripts.reproduce",
            "scripts.analysis.mse_step", "scripts.benchmarks.gpu_benchmark"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line(module, capsys):
    line = refusal(module, ["--no_such_flag", "1"], capsys)
    # An entry point with required arguments names those first; argparse checks them before unknown flags.
    assert "--no_such_flag" in line or "required" in line, line


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_a_flag_without_its_value_is_one_line(module, capsys):
    line = refusal(module, ["--no_such_flag"], capsys)
    assert "--no_such_flag" in line or "required" in line, line


@pytest.mark.parametrize("module", ["scripts.image_sample", "scripts.image_train", "scripts.analysis.few_step_grid"])
def test_a_removed_flag_names_its_replacement(module, capsys):
    line = refusal(module, ["--sampling_steps", "10"], capsys)
    assert "--sampling_steps was removed" in line and "--timestep_respacing" in line, line


def test_a_misspelled_flag_gets_its_close_spellings(capsys):
    line = refusal("scripts.image_sample", ["--num_sampels", "4"], capsys)
    assert "unknown flag --num_sampels (did you mean --num_samples" in line, line


def test_a_bad_value_is_one_line_naming_the_flag(capsys):
    line = refusal("scripts.image_train", ["--batch_size", "two"], capsys)
    assert line.endswith(": error: argument --batch_size: invalid int value: 'two'; run with --help for the flags")


@pytest.mark.parametrize("text, value", [("-1e-3", -1e-3), ("-2.5E+4", -2.5e4), ("-.5", -0.5), ("-7", -7.0), ("-inf", float("-inf"))])
def test_negative_numbers_are_values(text, value):
    parser = ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--flag", action="store_true")
    assert parser.parse_args(["--lr", text, "--flag"]).lr == value


def test_a_flag_after_a_flag_still_lacks_its_value(capsys):
    parser = ArgumentParser(prog="p")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--e3", action="store_true")
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr", "--e3"])
    assert capsys.readouterr().err == "p: error: argument --lr: expected one argument; run with --help for the flags\n"
