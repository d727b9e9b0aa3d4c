"""The `refusalscope` command line (commands live in `refusalscope.commands`)."""

from .commands import app

__all__ = ["app"]
