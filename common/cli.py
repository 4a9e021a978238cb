"""What the command-line programs share."""

from __future__ import annotations

import typer


def run_app(app: typer.Typer) -> int:
    """Run a Typer app and return its exit code (for ``[project.scripts]`` entry points)."""
    try:
        app()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0
