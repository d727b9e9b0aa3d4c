"""Loading chat models and reaching into their residual stream."""

from .chat import Batch, ChatModel, Generation
from .dtypes import native_bf16, resolve_dtype
from .embedded import EMBEDDED, embedded_names
from .hooks import ForwardContext, HookManager, StopForward
from .info import ModelInfo
from .loading import load_model, resolve_spec

__all__ = [
    "Batch",
    "ChatModel",
    "EMBEDDED",
    "ForwardContext",
    "Generation",
    "HookManager",
    "ModelInfo",
    "StopForward",
    "embedded_names",
    "load_model",
    "native_bf16",
    "resolve_dtype",
    "resolve_spec",
]
