"""``python -m hf_api_prompt ...`` is ``hf-api-prompt ...`` (e.g. under ``accelerate launch -m``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
