"""One sentence for a pydantic validation failure: where, and what."""

from __future__ import annotations

from pydantic import ValidationError


def first_problem(error: ValidationError, top: str = "(top level)") -> str:
    """``field.path: message`` of the first error (one line for people and logs); ``top``
    names the whole input when the problem is not in one field."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or top

    return f"{where}: {first['msg']}"
