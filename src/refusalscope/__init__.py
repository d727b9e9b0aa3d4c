"""refusalscope: find, steer and evaluate the SAE features that mediate refusal."""

from importlib import metadata as _metadata

from .errors import RefusalScopeError
from .models import ChatModel, Generation, load_model

try:
    __version__ = _metadata.version("refusalscope")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["ChatModel", "Generation", "RefusalScopeError", "load_model", "__version__"]
