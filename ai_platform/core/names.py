"""Name validation: a table or task name is a plain token, never a path.

Checked before any filesystem call, so no request can reach outside the lake.
"""

from __future__ import annotations

import re

from ai_platform.core.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1-128 characters of letters, digits, '_', '.', '-', starting with a letter or digit"
METRIC_KEY = re.compile(r"[A-Za-z0-9_./-]{1,128}")  # a metric series: names like "train/loss" too


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` unchanged if valid, else raise InvalidArgument saying why."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(str(name)) <= 64 else repr(str(name)[:64]) + f"... ({len(name)} chars)"
        raise InvalidArgument(f"invalid {what} {shown}: must be {NAME_RULE}")
    if name in {".", ".."} or ".." in name:
        raise InvalidArgument(f"invalid {what} {name!r}: must not contain '..'")
    return name
