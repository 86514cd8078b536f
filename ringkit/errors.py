"""Errors a user can cause. Each message says what was wrong and what to do about it."""


class RingkitError(Exception):
    """Base class of every error ringkit raises for a user mistake or bad input."""


class ShapeError(RingkitError, ValueError):
    """Array shapes or dtypes that do not fit together (or do not divide the mesh)."""


class MeshError(RingkitError, ValueError):
    """A mesh that cannot be built from the devices at hand, or lacks an axis ringkit needs."""


class ConfigError(RingkitError, ValueError):
    """An option or configuration value outside what ringkit supports."""


class UnsupportedError(RingkitError):
    """A combination (backend, impl, format) that this installation cannot run."""


class FormatError(RingkitError, ValueError):
    """A file that is corrupt, truncated or not in the format its name or contents claim."""


class MissingDependencyError(RingkitError, ImportError):
    """An optional package or data file is not installed; the message names the command."""


class SourceError(RingkitError, ValueError):
    """A source to read that is missing, empty, unreadable or of a kind ringkit does not read."""


class ResourceError(RingkitError, MemoryError):
    """Work that would not fit in the memory the devices have; the message says what would."""


class FitWarning(UserWarning):
    """A source was shortened to fit the model (``ringkit.read(..., fit="auto")``)."""


def is_whole(value, low: int = 0) -> bool:
    """Whether an option is a whole number (a Python or numpy int, not a bool) >= ``low``: the
    test every count, size and seed option shares before its own message."""
    import numbers

    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= low)


_AUDIENCE = ["python"]  # who reads errors: "python", or "cli" under the ``ringkit`` command


def advice(python: str, cli: str) -> str:
    """The part of an error's advice that names an option, worded for its reader: ``python``
    (an argument or call, e.g. ``"ocr=True"``) or, under the ``ringkit`` command, ``cli`` (its
    flags, e.g. ``"--ocr"``). Messages are worded when they are raised."""
    return cli if _AUDIENCE[-1] == "cli" else python


class cli_audience:
    """Within it, ``advice`` words errors for the ``ringkit`` command (``ringkit.cli.main``)."""

    def __enter__(self):
        _AUDIENCE.append("cli")
        return self

    def __exit__(self, *exc) -> None:
        _AUDIENCE.pop()
