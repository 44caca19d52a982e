"""The ctypes signature of each exported C function, read from its definition in the C source.

The argument types of a kernel are declared once, in C: this module parses the definitions of
the exported functions (``ll_*``) of ``<name>.c`` and the headers it includes, so the Python side
holds no second list of types that could drift from the prototype (a wrong width there reads
garbage or crashes). Names built by the token-pasting macros of the sources
(``CAT4(ll_xent_, X, _, P)``) are matched by their literal prefix: ``ll_xent_f32_bf16`` takes the
signature of the definition whose name starts ``ll_xent_``.

C types map to ctypes by their spelling: any pointer is ``c_void_p``; ``int64_t``, ``int``,
``double``, ``float`` and ``uint8_t``/``uint16_t``/``int16_t`` values are the ctypes of the
same width; ``void`` returns None. A parameter type outside that table is an error at parse time.
"""

from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path

__all__ = ["prototype", "prototypes"]

_HERE = Path(__file__).resolve().parent

_SCALARS = {
    "int64_t": ctypes.c_int64, "int": ctypes.c_int, "double": ctypes.c_double, "float": ctypes.c_float,
    "uint8_t": ctypes.c_uint8, "uint16_t": ctypes.c_uint16, "int16_t": ctypes.c_int16, "int32_t": ctypes.c_int32,
}
# A definition at the start of a line: return type, name (plain, or a CAT/CAT4 macro whose first
# token is the literal prefix), parameter list, then the opening brace of the body.
_DEFINITION = re.compile(
    r"^(?P<ret>int64_t|int|void|double|float)\s+"
    r"(?:(?P<name>ll_\w+)|CAT4?\((?P<prefix>ll_\w+),[^)]*\))"
    r"\s*\((?P<params>[^)]*)\)\s*\{", re.M)
_INCLUDE = re.compile(r'^#include\s+"(?P<file>[\w.]+)"', re.M)


def _ctype(spelling: str, where: str):
    text = " ".join(spelling.replace("const", " ").split())
    if "*" in text:
        return ctypes.c_void_p
    words = text.split()
    if not words:
        raise ValueError(f"{where}: an empty parameter")
    base = words[0] if len(words) == 1 else " ".join(words[:-1])  # drop the parameter's name
    if base not in _SCALARS:
        raise ValueError(f"{where}: parameter type {base!r} has no ctypes mapping (add it to _SCALARS)")
    return _SCALARS[base]


def _sources(name: str) -> list[Path]:
    """``<name>.c`` and the local headers it includes (recursively), in order."""
    seen: list[Path] = []

    def visit(path: Path) -> None:
        if path in seen or not path.exists():
            return
        seen.append(path)
        for match in _INCLUDE.finditer(path.read_text()):
            visit(_HERE / match["file"])

    visit(_HERE / f"{name}.c")
    return seen


@functools.lru_cache(maxsize=None)
def prototypes(name: str) -> dict[str, tuple[object, tuple]]:
    """Every exported definition of kernel ``name``: {name or macro prefix: (restype, argtypes)}.

    Example:
        >>> restype, argtypes = prototypes("xent")["ll_xent_"]
        >>> restype is ctypes.c_int64, len(argtypes), argtypes[0] is ctypes.c_void_p
        (True, 20, True)
    """
    found: dict[str, tuple[object, tuple]] = {}
    for path in _sources(name):
        for match in _DEFINITION.finditer(path.read_text()):
            key = match["name"] or match["prefix"]
            where = f"{path.name}: {key}"
            params = [p for p in match["params"].split(",") if p.strip()]
            if params == ["void"] or [p.strip() for p in params] == ["void"]:
                params = []
            argtypes = tuple(_ctype(p, where) for p in params)
            restype = None if match["ret"] == "void" else _SCALARS[match["ret"]]
            found[key] = (restype, argtypes)
    return found


def prototype(name: str, function: str) -> tuple[object, tuple]:
    """(restype, argtypes) of ``function`` in kernel ``name``: its own definition, or the one of
    the longest macro prefix it starts with.

    Raises:
        LookupError: no definition in the sources declares ``function``.
    """
    table = prototypes(name)
    if function in table:
        return table[function]
    prefixes = [key for key in table if function.startswith(key) and key.endswith("_")]
    if not prefixes:
        raise LookupError(f"logitlab._native: no definition of {function} in {name}.c or its headers")
    return table[max(prefixes, key=len)]
