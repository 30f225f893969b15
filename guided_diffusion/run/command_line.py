"""The one argument parser of every entry point: a refused command line is one line, never a page of usage.

argparse prints its whole usage before an error, reads `--lr -1e-3` as a flag without a value (its
negative-number test knows no exponent), and meets a flag that was removed with "unrecognized
arguments". `ArgumentParser` here says, in one line, which flag is wrong and what to do: the flag that
replaced a removed one, the close spellings of an unknown one, or --help.

`parse_only()` lets a caller (a plan check) ask whether an entry point would take a command line
without running it: its `main(argv)` stops once the parser has read argv.
"""

import argparse
import contextlib
import contextvars
import difflib
import re

# A value, not a flag: "-3", "-.5", "-1e-3", "-2.5E+4", "-inf", "-nan".
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)

# Flags this project had and removed: what a command line should say instead.
REMOVED_FLAGS = {
    "--sampling_steps": "the step count of every sampler is --timestep_respacing (e.g. --timestep_respacing 20)",
}


_PARSE_ONLY = contextvars.ContextVar("parse_only", default=False)


class Parsed(BaseException):
    """Ends an entry point's main(argv) inside `parse_only()` once argv is parsed (a BaseException, so
    that the scripts' handlers of failures let it through)."""

    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


class CommandLineRefused(BaseException):
    """Inside `parse_only()`: the parser refused argv; the message is its one line, without the prog."""


@contextlib.contextmanager
def parse_only():
    token = _PARSE_ONLY.set(True)
    try:
        yield
    finally:
        _PARSE_ONLY.reset(token)


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        unrecognized = "unrecognized arguments: "
        if message.startswith(unrecognized):
            message = self.unknown_flags_message(message[len(unrecognized):].split())
        if _PARSE_ONLY.get():
            raise CommandLineRefused(message)
        self.exit(2, f"{self.prog}: error: {message}; run with --help for the flags\n")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if _PARSE_ONLY.get():
            raise Parsed(parsed)
        return parsed

    def unknown_flags_message(self, extras):
        flags = [text.split("=", 1)[0] for text in extras if text.startswith("-")]
        for flag in flags:
            if flag in REMOVED_FLAGS:
                return f"{flag} was removed: {REMOVED_FLAGS[flag]}"
        if not flags:
            return f"unexpected argument(s) {' '.join(extras)}"
        known = [option for action in self._actions for option in action.option_strings]
        close = difflib.get_close_matches(flags[0], known, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"unknown flag {', '.join(flags)}{hint}"
