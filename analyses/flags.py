"""Command-line values shared by the analysis scripts: named paths, integer lists, checkpoint flags."""

from .outputs import check_file_safe_name


def add_checkpoint_arguments(parser):
    """`--checkpoints name=path,...`, repeated `--checkpoint NAME PATH`, and `--device`."""
    parser.add_argument(
        "--checkpoints",
        default="",
        help="comma-separated name=path pairs of model checkpoints (ADM state dicts, e.g. ema_0.9999_500000.pt)",
    )
    parser.add_argument(
        "--checkpoint",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "PATH"),
        help="one named checkpoint; may be repeated and combined with --checkpoints",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def parse_named_paths(text, flag):
    """`name=path,name=path` to (name, path) pairs."""
    pairs = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, separator, path = entry.partition("=")
        if not separator or not name.strip() or not path.strip():
            raise ValueError(f"{flag} entry {entry!r}: expected name=path")
        pairs.append((name.strip(), path.strip()))
    return pairs


def checkpoint_specs(checkpoints="", checkpoint_pairs=()):
    """(name, path) pairs in command-line order from the two checkpoint flags; names must be unique."""
    specs = parse_named_paths(checkpoints, "--checkpoints") + [(name, path) for name, path in checkpoint_pairs]
    if not specs:
        raise ValueError("no checkpoints: give --checkpoints name=path[,name=path...] or --checkpoint NAME PATH")
    seen = set()
    for name, _ in specs:
        check_file_safe_name(name, "checkpoint name")
        if name in seen:
            raise ValueError(f"checkpoint name {name!r} is given twice")
        seen.add(name)
    return specs


def parse_int_list(text, flag):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values:
        raise ValueError(f"{flag} is empty: expected comma-separated integers")
    return values


def require_positive(value, flag):
    if value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")
    return value
