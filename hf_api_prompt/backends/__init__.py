"""Auxiliary-model backends: one file each, one base class, a registry.

>>> from hf_api_prompt.backends import available_backends
>>> "clip" in available_backends()
True
"""

from .base import Backend, RawMaps, available_backends, get_backend, register_backend
from . import clip  # noqa: F401  (registers "clip")
from . import llava  # noqa: F401  (registers "llava")

__all__ = ["Backend", "RawMaps", "available_backends", "get_backend", "register_backend"]
