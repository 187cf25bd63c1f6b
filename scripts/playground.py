"""Start the playground: a local web page to try Attention Prompting on one image.

    pip install -e '.[playground]'
    python scripts/playground.py                      # bundled demo model, http://127.0.0.1:7860
    python scripts/playground.py --model ViT-L-14-336 --pretrained openai --port 8080

The page (``hf_api_prompt.playground.build_app``) lets you pick a bundled scene or
upload an image, ask a question, choose the backend and its parameters, and shows
the heatmap, the mask and the masked image side by side, with a download.
It listens on 127.0.0.1 only unless ``--host`` says otherwise.
"""

import argparse
import logging

from hf_api_prompt.backends import available_backends
from hf_api_prompt.playground import build_app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--backend", default="clip", choices=available_backends(), help="backend selected when the page opens")
    parser.add_argument("--model", default=None, help="model selected when the page opens (default: the bundled demo model for clip)")
    parser.add_argument("--pretrained", default=None, help="clip weights tag or file for --model (e.g. openai)")
    parser.add_argument("--layer-index", type=int, default=None, help="layer selected when the page opens (default: the model's)")
    parser.add_argument("--max-prompters", type=int, default=2, help="parameter sets kept loaded at once (default 2)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    app = build_app(
        backend=args.backend, model=args.model, pretrained=args.pretrained,
        layer_index=args.layer_index, max_prompters=args.max_prompters,
    )
    app.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
