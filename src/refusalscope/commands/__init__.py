"""CLI commands, one module per stage; every module here registers itself on `app`."""

import importlib
import pkgutil

from ._app import app

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["app"]
