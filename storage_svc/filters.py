"""Bounds on a scan's filter (a SQL expression), checked before Lance parses it.

Lance's parser recurses over the expression: a filter of tens of thousands of terms, or nested deeply enough, can
exhaust its stack and take the whole service down. A filter past these bounds is refused with a short message
(never echoing the filter itself, which could overflow gRPC's metadata limit).
"""

from __future__ import annotations

import re

from ai_platform.core.errors import InvalidArgument

MAX_FILTER_CHARS = 10_000
MAX_FILTER_TERMS = 1_000  # AND / OR / NOT operators
MAX_FILTER_DEPTH = 64  # nested parentheses
_OPERATOR = re.compile(r"\b(and|or|not)\b", re.IGNORECASE)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def check_filter(text: str) -> str:
    """``text`` unchanged when it is within bounds; InvalidArgument saying which bound it passes otherwise."""
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(f"the filter is {len(text)} characters long; the limit is {MAX_FILTER_CHARS}")
    if "\x00" in text:
        raise InvalidArgument("the filter contains a NUL character")
    bare = _QUOTED.sub("''", text)  # operators and parentheses inside string literals do not count
    terms = len(_OPERATOR.findall(bare))
    if terms > MAX_FILTER_TERMS:
        raise InvalidArgument(f"the filter has {terms} AND/OR/NOT operators; the limit is {MAX_FILTER_TERMS}")
    depth = deepest = 0
    for char in bare:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > MAX_FILTER_DEPTH:
        raise InvalidArgument(f"the filter nests parentheses {deepest} deep; the limit is {MAX_FILTER_DEPTH}")
    return text
