"""Attention Prompting on Image (Yu et al., ECCV 2024) as a Hugging Face ``datasets`` plugin.

>>> from hf_api_prompt import ImagePrompter, PrompterConfig
"""

from ._version import __version__
from .backends import available_backends, register_backend
from .config import PrompterConfig
from .inputs import RowError
from .prompter import ImagePrompter
from .prompts import available_prompts, register_prompt
from .stages import MapsPrompter, remask, sweep

__all__ = ["ImagePrompter", "MapsPrompter", "PrompterConfig", "RowError", "available_backends", "available_prompts",
           "register_backend", "register_prompt", "remask", "sweep", "__version__"]
