"""Serve an example app offline: the local test provider and the app, in one command.

    .venv/bin/python examples/serve.py                 # the reference app, http://127.0.0.1:8000
    .venv/bin/python examples/serve.py image_app       # the image app
    .venv/bin/python examples/serve.py prometheus_app  # the app with /metrics
    .venv/bin/python examples/serve.py playground_app  # the playground page: /playground

(from the repository's root; no virtualenv needs to be activated.)

It starts ``llm_server.testing.LocalProvider`` (an OpenAI/Anthropic-compatible server on
127.0.0.1) and points the example's ``config/model_config.yml`` at it through
``LLM_SERVER_PROVIDER_URL``, so no API key and no internet are needed. Pass
``--provider-url URL`` to use a provider you started yourself
(``.venv/bin/python -m llm_server.testing``).
The port is ``--port``, else the ``PORT`` environment variable, else 8000.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from llm_server.testing import LocalProvider

EXAMPLES = Path(__file__).resolve().parent
APPS = sorted(p.name for p in EXAMPLES.iterdir() if (p / "main.py").is_file())
TRY = {  # app -> (route, JSON body) printed as a ready-to-paste curl command
    "reference_app": ("/predict", '{"prompt": "Hello, world!"}'),
    "prometheus_app": ("/predict", '{"prompt": "Hello, world!"}'),
    "quickstart_app": ("/programs/summarize", '{"text": "DSPy programs, served."}'),
}


def main() -> None:
    """Parse the arguments, start the provider and serve the app until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", nargs="?", default="reference_app", choices=APPS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--provider-url", help="use this provider instead of starting one")
    parser.add_argument("--provider-latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    app_dir = EXAMPLES / args.app
    provider = None
    if args.provider_url:
        os.environ["LLM_SERVER_PROVIDER_URL"] = args.provider_url.rstrip("/")
    else:
        provider = LocalProvider(latency_s=args.provider_latency_ms / 1000).start()
        os.environ["LLM_SERVER_PROVIDER_URL"] = provider.base_url
        print(f"local test provider on {provider.base_url}", flush=True)
    url = f"http://{args.host}:{args.port}"
    if args.app in TRY:
        route, body = TRY[args.app]
        print(
            f"try: curl -X POST {url}{route} -H 'Content-Type: application/json' -d '{body}'",
            flush=True,
        )
    elif args.app == "image_app":
        print(f"try: curl -F file=@photo.jpg {url}/describe", flush=True)
    elif args.app == "playground_app":
        print(f"open {url}/playground in a browser", flush=True)
    os.chdir(app_dir)  # the example reads config/model_config.yml relative to its folder
    sys.path.insert(0, str(app_dir))
    try:
        uvicorn.run("main:app", host=args.host, port=args.port, log_level="info")
    finally:
        if provider is not None:
            provider.stop()


if __name__ == "__main__":
    main()
