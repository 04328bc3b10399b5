"""A list's JSON body assembled from pre-encoded pieces: byte for byte what jsonify makes of the
same dict (Flask's compact separators, ensure_ascii, keys in insertion order, a final newline),
for the hot path: a known user's nightly list, or the fallback, with no ?recent= or ?explain=.

Each item's `{"id":"<item id>","score":` is encoded once per process and version (kept in the
version's memo, filled as items are first served: a version never changes, and a switch brings a
new Version); a request only formats its scores (round(score, 6), as float repr, as json does) and
joins strings.
"""

from __future__ import annotations

import json
import math
import re
from json import encoder

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from dailyrec.publish import keys as K

# The C function json.dumps itself uses for str with ensure_ascii (the pure-Python one otherwise:
# same output).
_string = encoder.encode_basestring_ascii


def compatible(app: Flask) -> bool:
    """Whether jsonify in this app writes what this module writes: Flask's own provider, compact
    (not debug mode's indentation), ASCII-escaped, keys unsorted."""
    provider = app.json
    return (type(provider) is DefaultJSONProvider and provider.ensure_ascii
            and not provider.sort_keys
            and (provider.compact or (provider.compact is None and not app.debug)))


def _number(value: float) -> str:
    """json's encoding of round(value, 6)."""
    value = round(value, 6)
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _item_prefixes(version) -> list:
    prefixes = version.memo.get("json_item_prefix")
    if prefixes is None:  # a race only builds the same empty list twice
        prefixes = version.memo.setdefault("json_item_prefix", [None] * len(version.item_ids))
    return prefixes


def _name(version) -> str:
    name = version.memo.get("json_name")
    if name is None:
        name = version.memo["json_name"] = json.dumps(version.name)
    return name


# "%.6f" rounds as round(x, 6) does (both correctly rounded from the exact binary value), and for
# 1e-4 <= |x| < 1e9 the shortest repr of the rounded value is those digits without trailing zeros
# (at most 15 significant digits: one double each); outside that range, _number.
_TRAILING_ZEROS = re.compile(r"(?<=\.\d)(\d*?)0+(?=,|$)")
_FORMATS = [",".join(["%.6f"] * k) for k in range(64)]


def _numbers(scores: list[float]) -> list[str]:
    """[json's encoding of round(s, 6) for s in scores]."""
    if scores and len(scores) < len(_FORMATS):
        low, high = min(scores), max(scores)
        if (1e-4 <= low and high < 1e9) or (-1e9 < low and high <= -1e-4):
            return _TRAILING_ZEROS.sub(r"\1", _FORMATS[len(scores)] % tuple(scores)).split(",")
    return [_number(s) for s in scores]


def items(version, pairs, n: int) -> str:
    """`[{"id":...,"score":...},...]` of the first n (item position, score) pairs."""
    prefixes = _item_prefixes(version)
    ids = version.item_ids
    pairs = pairs[:n]
    parts = []
    for (position, _), number in zip(pairs, _numbers([s for _, s in pairs])):
        prefix = prefixes[position]
        if prefix is None:
            prefix = prefixes[position] = '{"id":' + json.dumps(ids[position]) + ',"score":'
        parts.append(prefix + number + "}")
    return "[" + ",".join(parts) + "]"


def list_body(version, user_id: str, record: bytes | None, n: int) -> str:
    """The body for a user without ?recent= or ?explain=: their record ("personalized"), or the
    fallback when the version does not know them (record None)."""
    if record is not None:
        source, pairs = "personalized", K.decode_record(record, version.top_n)
    else:
        source, pairs = "fallback", version.fallback
    return ('{"user_id":' + _string(user_id) + ',"items":' + items(version, pairs, n)
                    + ',"model_version":' + _name(version) + ',"source":"' + source + '"}\n')
