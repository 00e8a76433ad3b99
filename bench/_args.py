"""Command-line helpers shared by the bench scripts."""
from __future__ import annotations


def named(text: str, flag: str, what: str) -> tuple[str, str]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``; a ``SystemExit`` naming ``flag`` and the expected
    ``what`` (e.g. ``"DIR"``) when either side is empty."""
    name, _, value = text.partition("=")
    if not name or not value:
        raise SystemExit(f"{flag} must be NAME={what}, got {text!r}")
    return name, value
