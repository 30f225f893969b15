"""The package layout: ADM's module paths import, the core shows the science first and imports nothing else."""

import ast
import importlib
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(REPO, "guided_diffusion")
ADM_MODULES = ("gaussian_diffusion", "unet", "respace", "script_util", "train_util", "image_datasets", "dist_util",
               "logger", "fp16_util", "nn", "losses", "resample")
OTHER_PACKAGES = ("datasets", "evaluations", "analyses", "pipeline", "scripts", "tests")


@pytest.mark.parametrize("name", ADM_MODULES)
def test_adm_module_paths_import(name):
    module = importlib.import_module(f"guided_diffusion.{name}")
    assert module.__file__ == os.path.join(CORE, f"{name}.py")


def test_adm_entry_points_keep_their_names():
    from guided_diffusion import script_util

    for name in ("create_model_and_diffusion", "model_and_diffusion_defaults", "add_dict_to_argparser", "args_to_dict"):
        assert callable(getattr(script_util, name))


def test_the_core_lists_the_science_and_keeps_run_machinery_apart():
    modules = sorted(f[:-3] for f in os.listdir(CORE) if f.endswith(".py") and f != "__init__.py")
    assert len(modules) <= 20, modules
    for science in ("gaussian_diffusion", "unet", "weighting", "targets", "samplers", "respace"):
        assert science in modules
    machinery = sorted(f[:-3] for f in os.listdir(os.path.join(CORE, "run")) if f.endswith(".py") and f != "__init__.py")
    assert {"atomic", "checkpoint", "job", "run_lock", "preemption", "retention", "device_health"} <= set(machinery)


def test_the_core_imports_no_other_package_of_the_repository():
    for folder, _, files in os.walk(CORE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Import):
                    roots = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    continue
                assert not set(roots) & set(OTHER_PACKAGES), f"{os.path.relpath(path, REPO)} imports {roots}"
