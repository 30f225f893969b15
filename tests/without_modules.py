"""Run a Python module as if some installed packages were absent, as on the lent GPU machines.

    python tests/without_modules.py torch_fidelity,blobfile -m pytest --collect-only -m cuda tests/test_cuda.py

A finder placed first on sys.meta_path refuses the named top-level modules from site-packages, so an
`import` of them fails as for a package that is not installed, while a stand-in elsewhere on the path
(scripts/benchmarks/blobfile_shim) still imports. Children of this process see the packages again.
"""

import importlib.machinery
import os
import runpy
import sys
import sysconfig

SITE_DIRS = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}


class HiddenModules:
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in self.names:
            return None
        outside_site = [p for p in (path or sys.path) if os.path.realpath(p or ".") not in SITE_DIRS]
        spec = importlib.machinery.PathFinder.find_spec(name, outside_site)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/without_modules.py)", name=name)
        return spec


def main(argv):
    if len(argv) < 3 or argv[1] != "-m":
        sys.exit("usage: python tests/without_modules.py NAME[,NAME...] -m MODULE [ARGS...]")
    sys.meta_path.insert(0, HiddenModules(filter(None, argv[0].split(","))))
    sys.argv = [argv[2]] + argv[3:]
    # The repository root, not tests/, first on the path, as for `python -m`.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
