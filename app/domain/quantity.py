"""Kubernetes resource quantities (``512Mi``, ``2Gi``, ``1G``, ``1.5Gi``, ``100M``…).

Only the forms that make sense for memory and storage sizes are accepted: a non-negative decimal
number followed by an optional binary (Ki…Ei) or decimal (k, M…E) suffix.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>[KMGTPE]i|[kMGTPE]|)$")


def parse_quantity(text: str) -> int:
    """The number of bytes ``text`` stands for (rounded up); ValueError if it is no quantity."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(text)
    try:
        number = Decimal(match["number"])
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise ValueError(text) from e
    value = number * _SUFFIXES[match["suffix"]]
    return int(value.to_integral_value(rounding="ROUND_CEILING"))
