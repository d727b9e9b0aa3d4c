"""One exception type for every user-facing failure.

Users hit bad input long before they hit bugs: a missing file, an SAE for another model,
a layer index out of range. Each such case raises `RefusalScopeError` with the problem and
the fix, so the CLI can print two short lines and exit non-zero instead of a traceback.
"""

from __future__ import annotations


class RefusalScopeError(Exception):
    """A problem the user can fix; `fix` says how."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")
