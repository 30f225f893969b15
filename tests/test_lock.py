"""requirements.lock agrees with the ranges of requirements.txt and with the running interpreter."""

import os
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def requirements(path):
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def locked_pins(path):
    """{name: [(version, marker or None, hash count)]} from a hashed lock file."""
    pins = {}
    for block in re.split(r"\n(?=[a-z0-9])", path.read_text()):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        requirement, _, marker = head.partition(";")
        name, version = requirement.strip().split("==")
        hashes = block.count("--hash=sha256:")
        pins.setdefault(canonicalize_name(name), []).append((version, Marker(marker) if marker.strip() else None, hashes))
    return pins


def pin_for_this_python(entries):
    matching = [entry for entry in entries if entry[1] is None or entry[1].evaluate()]
    assert len(matching) == 1, entries
    return matching[0]


def test_every_range_of_requirements_txt_is_locked_within_its_range():
    pins = locked_pins(REPO / "requirements.lock")
    for requirement in requirements(REPO / "requirements.txt"):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version, _, hashes = pin_for_this_python(pins[canonicalize_name(requirement.name)])
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
        assert hashes >= 1, requirement.name


def test_the_lock_pins_the_torch_of_requirements_lock_in():
    pins = locked_pins(REPO / "requirements.lock")
    for requirement in requirements(REPO / "requirements-lock.in"):
        version, _, _ = pin_for_this_python(pins[canonicalize_name(requirement.name)])
        assert requirement.specifier.contains(version)


def test_the_environment_holds_the_locked_torch():
    import torch

    if os.environ.get("DEBIAS_UNLOCKED"):
        pytest.skip("make check-latest: the newest releases, not the lock, on purpose")
    torch_version, _, _ = pin_for_this_python(locked_pins(REPO / "requirements.lock")["torch"])
    assert torch.__version__.split("+")[0] == torch_version


def test_the_lock_covers_the_pythons_the_project_claims():
    claimed = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    lowest = (int(claimed.group(1)), int(claimed.group(2)))
    header = (REPO / "Makefile").read_text()
    assert f"--python-version {lowest[0]}.{lowest[1]}" in header
    assert sys.version_info[:2] >= lowest


def test_install_cuda_keeps_every_locked_package_but_torch_and_its_cuda_libraries(tmp_path):
    import subprocess

    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "install-cuda", f"VENV={tmp_path}"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    awk = next(line for line in dry_run.replace("\\\n", " ").splitlines() if line.lstrip().startswith("awk"))
    subprocess.run(["bash", "-c", awk], cwd=REPO, check=True)
    kept = locked_pins(tmp_path / "requirements-without-torch.lock")
    everything = locked_pins(REPO / "requirements.lock")
    dropped = set(everything) - set(kept)
    assert {"torch", "torchvision", "triton", "nvidia-cublas", "cuda-toolkit"} <= dropped
    assert all(name.startswith(("torch", "nvidia-", "cuda-", "triton")) for name in dropped)
    assert "torch-fidelity" in kept and "numpy" in kept
    assert all(hashes >= 1 for entries in kept.values() for _, _, hashes in entries)
