"""``facegpt-serve``: the chat engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

    facegpt-serve --cfg-path eval_configs/minigptv2_eval.yaml --port 8000
    curl http://127.0.0.1:8000/v1/models

Local by default (``--host 127.0.0.1``); on another interface set ``--api-key``. Faults in the flags or the config
are one-line errors with exit status 2 (:mod:`minigpt4.common.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from minigpt4.common.config import add_config_args, load_config
from minigpt4.common.errors import UserError, entry_point
from minigpt4.common.logger import get_logger, setup_logging
from minigpt4.conversation.generation import GenerationSettings
from minigpt4.serve.protocol import ServeLimits

logger = get_logger(__name__)
PROG = "facegpt-serve"
API_KEY_ENV = "FACEGPT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeUsageError(UserError, ValueError):
    """A bad ``facegpt-serve`` flag (the message names it and the fix)."""


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    limits, gen = ServeLimits(), GenerationSettings()
    parser = argparse.ArgumentParser(prog=PROG, description="Serve a FaceGPT model through an OpenAI-compatible "
                                     "API: POST /v1/chat/completions, GET /v1/models, GET /health.")
    add_config_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", help="the model id clients send (default: the config file's name)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV})")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="fetch http(s) image URLs (refused by default: send data: URLs)")
    parser.add_argument("--max-queue", type=int, default=16, help="requests that may wait; more get 503")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="non-streamed requests with equal settings answered in one batched generation")
    parser.add_argument("--retry-after", type=int, default=5, help="Retry-After seconds of a 503")
    parser.add_argument("--max-tokens-cap", type=int, default=limits.max_tokens_cap,
                        help="largest max_tokens a request may ask for")
    parser.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels,
                        help="largest image (width x height) accepted")
    parser.add_argument("--max-request-bytes", type=int, default=limits.max_request_bytes,
                        help="largest request body accepted")
    parser.add_argument("--max-images", type=int, default=limits.max_images, help="images per conversation")
    parser.add_argument("--max-new-tokens", type=int, default=gen.max_new_tokens,
                        help="answer length when a request sets no max_tokens")
    parser.add_argument("--max-length", type=int, default=gen.max_length, help="bound of prompt + answer")
    parser.add_argument("--device", help="torch device (default: cuda:<gpu-id> if available, else cpu)")
    parser.add_argument("--gpu-id", type=int, default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible flag values before the model is built."""
    for name in ("max_queue", "max_batch", "max_tokens_cap", "max_image_pixels", "max_request_bytes", "max_images",
                 "retry_after"):
        if getattr(args, name) < 1:
            raise ServeUsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise ServeUsageError(f"--port must be in 0..65535, got {args.port}")
    if not Path(args.cfg_path).is_file():
        raise ServeUsageError(f"--cfg-path {args.cfg_path}: no such file")
    if args.host not in LOOPBACK and not args.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach it can use the model", args.host)


def limits_from_args(args: argparse.Namespace) -> ServeLimits:
    """The request limits the flags ask for."""
    return ServeLimits(max_request_bytes=args.max_request_bytes, max_image_pixels=args.max_image_pixels,
                       max_tokens_cap=args.max_tokens_cap, max_images=args.max_images,
                       allow_remote_images=args.allow_remote_images)


@entry_point(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the flags, build the chat engine from the config, serve until Ctrl-C."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    check_args(args)
    try:
        import uvicorn

        from minigpt4.serve.app import ServeConfig, create_app
    except ImportError as err:
        raise ServeUsageError(f"{err.name} is not installed: pip install -e '.[serve]'") from None
    from minigpt4.conversation.factory import chat_from_config, resolve_device

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, max_length=args.max_length)
    cfg = load_config(args.cfg_path, args.options, check_dataset_paths=False)  # serving reads no dataset
    device = resolve_device(args.device, args.gpu_id)
    chat = chat_from_config(cfg, device, settings)
    config = ServeConfig(model_id=args.model_name or Path(args.cfg_path).stem, limits=limits_from_args(args),
                         api_key=args.api_key, max_queue=args.max_queue, retry_after_s=args.retry_after,
                         max_batch=args.max_batch)
    app = create_app(chat, config)
    logger.info("listening on http://%s:%d/v1 (model id %r)", args.host, args.port, config.model_id)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
