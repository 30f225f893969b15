"""Error types of the evaluation suite.

Every problem with user input (a file, a flag, a value) is raised as one of
these with a one-line message naming what was given and what was expected;
the command-line entry points print that line and exit non-zero.
"""


class EvaluationError(ValueError):
    """Bad input to an evaluation: wrong file contents, shapes, keys or flag values."""


class MissingInputError(EvaluationError, FileNotFoundError):
    """A path given to an evaluation does not exist or holds nothing usable."""
