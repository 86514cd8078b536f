"""The GGUF container (llama.cpp's file format): metadata fields and tensor byte views.

``gguf.GGUFReader`` builds numpy views of every part of every field; for SmolLM2's 49K tokens and
48K merges that costs ~9.5 s a read, most of ``load_model``. The layout is small enough to parse
directly: here a read of the same file's metadata takes ~0.2 s, and tensors stay views into one
memory map until they are dequantized (``gguf.quants``).

Layout (version 2 and 3, little-endian): magic ``GGUF``, version u32, tensor count u64, field count
u64; the fields (key string, value type u32, value); the tensor infos (name, dims u32 + u64 each,
innermost first, type u32, offset u64); then the tensor data, aligned to ``general.alignment``.
Strings are a u64 length and UTF-8 bytes.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import struct
from pathlib import Path

import numpy as np

from ringkit.errors import FormatError, UnsupportedError

_SCALARS = {  # GGUF value type -> struct format (little-endian)
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
           10: "<u8", 11: "<i8", 12: "<f8"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor's info and raw bytes: ``data`` is ``uint8 [*shape[:-1], bytes per row]`` (a
    view into the file), ``shape`` in numpy order (outermost first), ``qtype`` a
    ``gguf.GGMLQuantizationType``."""

    name: str
    shape: tuple[int, ...]
    qtype: object
    data: np.ndarray


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        end = self.pos + n
        if end > len(self.buf):
            raise EOFError("a string runs past the end of the file")
        raw, self.pos = self.buf[self.pos:end], end
        return bytes(raw).decode("utf-8")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            sub, n = self.scalar("<I"), self.scalar("<Q")
            if sub in _DTYPES:  # numbers: one numpy read instead of n struct calls
                arr = np.frombuffer(self.buf, _DTYPES[sub], count=n, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(sub) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {kind}")


def read(path, *, tensors: bool = True) -> tuple[dict, dict[str, Tensor]]:
    """``(fields, tensors)`` of the GGUF file at ``path``: every metadata field as plain Python
    values (strings, numbers, lists) and, unless ``tensors=False``, each tensor by name.

    Example::

        fields, tensors = read("SmolLM2-135M-Instruct.Q4_1.gguf")
        fields["llama.block_count"], tensors["token_embd.weight"].shape   # 30, (49152, 576)
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:  # ValueError: an empty file cannot be mapped
        raise FormatError(f"{path} is not a readable GGUF file ({err}); it may be truncated or "
                          "corrupt: download it again") from None
    try:
        return _parse(memoryview(buf), path, tensors)
    except (struct.error, EOFError, ValueError, OverflowError, MemoryError) as err:
        raise FormatError(
            f"{path} is not a readable GGUF file ({type(err).__name__}: {err}); it may be "
            "truncated or corrupt: download it again") from None


def _parse(buf, path: Path, want_tensors: bool):
    import gguf

    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("no GGUF magic at the start")
    cur.pos = 4
    version = cur.scalar("<I")
    if version & 0xFFFF == 0:
        raise UnsupportedError(f"{path} is a big-endian GGUF file; ringkit reads little-endian "
                               "ones (convert it with llama.cpp's gguf tools)")
    if version not in (2, 3):
        raise UnsupportedError(f"{path} is GGUF version {version}; ringkit reads versions 2 and 3")
    n_tensors, n_fields = cur.scalar("<Q"), cur.scalar("<Q")
    fields = {}
    for _ in range(n_fields):
        key = cur.string()
        fields[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    if not want_tensors:
        return fields, {}
    align = fields.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align & (align - 1):
        raise ValueError(f"general.alignment is {align!r}, not a power of two")
    start = -(-cur.pos // align) * align
    tensors = {}
    for name, dims, kind, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(kind)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise UnsupportedError(f"tensor {name} in {path.name} has GGML type {kind}, which "
                                   "this version of gguf does not know") from None
        shape = tuple(int(d) for d in reversed(dims)) or (1,)
        if shape[-1] % block:
            raise ValueError(f"tensor {name}'s rows ({shape[-1]}) do not fill "
                             f"{qtype.name} blocks of {block}")
        row_bytes = shape[-1] // block * type_size
        count = math.prod(shape[:-1]) * row_bytes  # Python ints: a huge shape cannot wrap
        if start + offset + count > len(buf):
            raise EOFError(f"tensor {name} runs past the end of the file")
        data = np.frombuffer(buf, np.uint8, count=count, offset=start + offset)
        tensors[name] = Tensor(name, shape, qtype, data.reshape(*shape[:-1], row_bytes))
    return fields, tensors
