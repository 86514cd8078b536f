"""LWM's ``vqgan`` file: a pickle of nested dicts of numpy arrays, read with an unpickler that
accepts only those containers and numpy's array reconstruction, so a malicious file cannot run
code. ``VQGAN.load(path)`` reads it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from ringkit.errors import FormatError, SourceError


class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise FormatError(
            f"the VQGAN file refers to {module}.{name}; only dicts of numpy arrays are accepted "
            "(refusing to run code from a pickle)")


def load_vqgan_params(path) -> dict:
    """LWM's ``vqgan`` file as nested dicts of float32 numpy arrays (restricted unpickling)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"no VQGAN file at {path}: pass the path of LWM's 'vqgan' file "
                          "(it comes with LWM's vision checkpoints)") from None
    except IsADirectoryError:
        found = path / "vqgan"
        raise SourceError(f"{path} is a folder; pass the VQGAN file itself"
                          + (f" ({found})" if found.is_file() else "")) from None
    except OSError as e:
        raise SourceError(f"cannot read the VQGAN file {path} ({e.strerror or e})") from None
    try:
        data = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except FormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise FormatError(f"{path} is not a readable VQGAN pickle ({err}); it may be truncated "
                          "or corrupt") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} does not hold a dict of VQGAN parameters")
    return data
