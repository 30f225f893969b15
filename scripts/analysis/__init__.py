"""Command lines of the paper's analyses: `python -m scripts.analysis.<name> --help`. The library is `analyses/`."""

import sys


def run_command(name, command, argv):
    """Run `command(argv)`; a bad input ends with one line `<name>: error: ...` and exit status 1."""
    try:
        command(argv)
    except (ValueError, OSError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1
    return 0
