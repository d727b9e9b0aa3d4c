"""CLI commands, one module per stage; every module here registers itself on `app`.

Modules are imported in pipeline order so that `refusalscope --help` lists commands the
way a study proceeds; any other module dropped in this package is registered after them.
"""

import importlib
import pkgutil

from ._app import app

ORDER = ("models", "sae", "discover", "steer", "evaluate", "data")

for _name in ORDER + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in ORDER)):
    if not _name.startswith("_"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["app"]
