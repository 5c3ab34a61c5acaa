"""Error messages of hf_ovseg: every user-facing error is one readable line."""

from __future__ import annotations


def first_line(error: BaseException, max_chars: int | None = None) -> str:
    """An error's message cut to its first non-empty line (and to ``max_chars``), or its class name when it has
    none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:max_chars] if lines else error.__class__.__name__


__all__ = ["first_line"]
