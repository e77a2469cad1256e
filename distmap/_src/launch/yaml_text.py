"""A small YAML writer for Kubernetes manifests (distmap does not depend on PyYAML).

Only what manifests need: mappings, sequences, strings, integers, booleans and ``None``,
in block style. Every string *value* is written double-quoted with escapes, so no value can
turn into another type (``"no"``, ``"1e3"``, ``"None"``), start a comment, or break a line;
keys are written bare only when they are plain words that YAML 1.1 and 1.2 read the same.

Example:
    >>> print(dump({"kind": "Job", "spec": {"completions": 2, "args": ["a b", "$(x)", "no"]}}), end="")
    kind: "Job"
    spec:
      completions: 2
      args:
      - "a b"
      - "$(x)"
      - "no"
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
# Words YAML 1.1 reads as booleans or null (keys too); such keys are quoted.
_SPECIAL = {"y", "yes", "n", "no", "on", "off", "true", "false", "null", "~"}
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0", "\x07": "\\a",
            "\x08": "\\b", "\x0b": "\\v", "\x0c": "\\f", "\x1b": "\\e"}


def _printable(c: str) -> bool:
    o = ord(c)
    if o in (0x2028, 0x2029, 0xFEFF):  # line and paragraph separators, byte-order mark
        return False
    return 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or 0x10000 <= o <= 0x10FFFF


def quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back as exactly ``text``.

    Example:
        >>> print(quote('say "hi"\\n$(id); \\\\ é'))
        "say \\"hi\\"\\n$(id); \\\\ é"
    """
    out = ['"']
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif _printable(c):
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    out.append('"')
    return "".join(out)


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"mapping keys must be strings, got {key!r}")
    if _PLAIN_KEY.match(key) and key.lower() not in _SPECIAL:
        return key
    return quote(key)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as YAML (strings, ints, bools, None, lists, dicts)")


def _is_seq(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out = []
        for k, v in value.items():
            if isinstance(v, Mapping) and v:
                out.append(f"{pad}{_key(k)}:")
                out += _lines(v, indent + 2)
            elif _is_seq(v) and v:
                out.append(f"{pad}{_key(k)}:")
                out += _lines(v, indent)  # block sequences may sit at their key's indent
            else:
                out.append(f"{pad}{_key(k)}: {_flow_empty(v)}")
        return out
    if _is_seq(value):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if (isinstance(item, Mapping) or _is_seq(item)) and item:
                inner = _lines(item, indent + 2)
                out.append(pad + "- " + inner[0][indent + 2:])
                out += inner[1:]
            else:
                out.append(f"{pad}- {_flow_empty(item)}")
        return out
    return [pad + _scalar(value)]


def _flow_empty(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if _is_seq(value):
        return "[]"
    return _scalar(value)


def dump(document: Any) -> str:
    """One YAML document (no ``---``), ending in a newline."""
    return "\n".join(_lines(document, 0)) + "\n"


def dump_all(documents: Iterable[Any]) -> str:
    """Several documents, each opened by ``---``."""
    return "".join("---\n" + dump(d) for d in documents)


__all__ = ["dump", "dump_all", "quote"]
