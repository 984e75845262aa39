"""``llm-tflite serve``: the autocomplete app and an OpenAI-style API on a local server."""

from __future__ import annotations

import argparse
import ipaddress

from llm_tflite.console import logger


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    from llm_tflite.errors import UnsupportedRuntimeError

    try:
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UnsupportedRuntimeError("llm-tflite serve needs Starlette and uvicorn: pip install 'llm-tflite[serve]'") from e
    from llm_tflite.errors import InvalidArgumentError
    from llm_tflite.serve.app import Limits, create_app, graceful_server

    for name in ("workers", "max_body_bytes", "max_prompt_chars", "max_tokens"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be at least 1")
    if args.chat_cache < 0:
        raise InvalidArgumentError("--chat-cache must be 0 or more")
    if not 0 < args.queue_timeout <= 3600 or not 0 < args.port < 65536:
        raise InvalidArgumentError("--queue-timeout must be in (0, 3600] seconds and --port in 1..65535")

    if args.max_streams_per_key < 1 or not 0 <= args.grace_seconds <= 3600:
        raise InvalidArgumentError("--max-streams-per-key must be at least 1 and --grace-seconds in [0, 3600]")
    from llm_tflite.serve.gate import read_api_keys

    keys = read_api_keys(args.api_key, args.api_key_file)
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars,
                    max_tokens=args.max_tokens, wait_seconds=args.queue_timeout, chat_cache=args.chat_cache,
                    max_streams_per_key=args.max_streams_per_key)
    app = create_app(args.file, workers=args.workers, limits=limits, api_keys=keys, cors_origins=args.cors_origin or (),
                     parallel=args.parallel, lanes=args.lanes)
    if not _loopback(args.host) and not keys:
        logger.warning("serving on %s: other machines can reach this server; it has no authentication "
                       "(--api-key / --api-key-file)", args.host)
    pool = app.state.pool
    logger.info("serving %s with %d worker(s) x %d parallel on http://%s:%d/ (Ctrl+C stops)%s", args.file,
                args.workers, pool.parallel, args.host, args.port, f"; {len(keys)} API key(s)" if keys else "")

    graceful_server(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.grace_seconds,
                    log_level="warning" if args.verbosity <= 0 else "info").run()
    return 0


def _lanes(text: str):
    if text == "auto" or text.isdigit():
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"'auto' or a number, not {text!r}")


def add_commands(cli) -> None:
    p = cli.add_parser("serve", help="serve the autocomplete app and an OpenAI-style API (completions, chat) for a file")
    p.add_argument("file", help="the .tflite file to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (other than loopback: reachable by "
                   "other machines)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--workers", type=int, default=1, help="runners in this process, each with cores / workers "
                   "threads, computing at once (each --parallel slots)")
    p.add_argument("--parallel", type=int, help="requests each runner serves at once, their decode steps batched into "
                   "one call (default: the largest --batch-sizes the file was converted with, else 1)")
    p.add_argument("--lanes", type=_lanes, default="auto", help="schedulers per runner, each decoding its own "
                   "requests on a compiled model with its share of the runner's threads, at the same time (two: about "
                   "555 MB more than one for GPT-2 124M; default auto: 2 when the runner has 2 threads or more, runs "
                   "on LiteRT's C API, and both --parallel, if given, and the file's largest batch are above 4; 1: one)")
    p.add_argument("--queue-timeout", type=float, default=30.0,
                   help="seconds a request waits for a free runner before 503")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="largest request body")
    p.add_argument("--max-prompt-chars", type=int, default=8000, help="longest prompt or text")
    p.add_argument("--max-tokens", type=int, default=256, help="most new tokens a request may ask for")
    p.add_argument("--api-key", action="append", help="a key clients must send (Authorization: Bearer KEY) for every "
                   "route but / and /health (repeatable; at least 16 characters)")
    p.add_argument("--api-key-file", help="a file of keys, one per line (# comments)")
    p.add_argument("--max-streams-per-key", type=int, default=4, help="requests one key may have in flight (429 past it)")
    p.add_argument("--cors-origin", action="append", help="an origin whose pages may call the API (repeatable; "
                   "default: none, only the server's own page)")
    p.add_argument("--grace-seconds", type=float, default=30.0,
                   help="on SIGTERM or Ctrl+C, how long running requests may take to finish (new ones get 503)")
    p.add_argument("--chat-cache", type=int, default=4,
                   help="conversations whose KV caches each worker keeps, so a client sending its history again "
                   "prefills only new tokens (each holds one KV cache of the model's context)")
    p.set_defaults(func=cmd_serve)
