"""The ``llm-tflite`` command: the parser, global options, logging and exit codes.

Each command group lives in its own module (``convert``, ``run``, ``training``,
``evaluation``, ``plugins``) with an ``add_commands(cli)`` function; plugins add
theirs through the ``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from llm_tflite.console import catch_interrupts, interrupted, release_interrupts
from llm_tflite.errors import LLMTFLiteError

GROUPS = ("convert", "run", "serve", "training", "evaluation", "plugins")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, when it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text and "default:" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with our help formatter (subcommand parsers, plugins' included)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="print only results, warnings and errors")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="also show debug lines and TensorFlow's / LiteRT's own messages")


def build_parser() -> argparse.ArgumentParser:
    from llm_tflite import __version__
    from llm_tflite.plugins.manager import call_hook

    parser = Parser(prog="llm-tflite", description="Convert Keras language models to TensorFlow Lite and run them.")
    parser.add_argument("--version", action="version", version=f"llm-tflite {__version__}",
                        help="print the version and exit")
    _add_verbosity(parser, 0)
    cli = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"llm_tflite.cli.{group}").add_commands(cli)
    call_hook("register_commands", cli=cli)
    for sub in cli.choices.values():  # -q / -v also after the command name
        _add_verbosity(sub, argparse.SUPPRESS)
    return parser


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was when logging was set
    up: a server thread outliving a redirected stderr (a test's capture, a notebook cell) would
    otherwise write to a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(verbosity: int) -> None:
    """Our log lines on stderr; ``-v`` also lets TensorFlow and LiteRT speak."""
    if verbosity > 0:
        os.environ["LLM_TFLITE_VERBOSE"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("llm-tflite: %(message)s"))
    logger = logging.getLogger("llm_tflite")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity])


def main(argv=None) -> int:
    previous = catch_interrupts()
    try:
        return _main(argv)
    finally:
        release_interrupts(previous)


def _main(argv) -> int:
    try:
        parser = build_parser()
    except LLMTFLiteError as e:  # a broken plugin
        print(f"error: {e}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    configure_logging(args.verbosity)
    _keras_backend(getattr(args, "keras_backend", None) or "tensorflow")  # finetune --backend; run's is LiteRT's
    try:
        return args.func(args)
    except (LLMTFLiteError, ValueError, FileNotFoundError) as e:
        if interrupted():  # native code made an ordinary error of the KeyboardInterrupt
            print("interrupted", file=sys.stderr)
            return 130
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, LLMTFLiteError) else 2  # ValueError: bad argument values from our own checks
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `llm-tflite plugins | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _keras_backend(backend: str) -> None:
    """Commands run Keras on TensorFlow (the converter needs it) whatever ``KERAS_BACKEND`` says: the
    KerasHub tutorials set ``jax`` for their notebooks, and a shell that exported it should not stop
    a conversion. ``finetune --backend jax`` asks for JAX. Keras reads the variable when it is first
    imported, which is later in this process."""
    from llm_tflite.console import logger

    current = os.environ.get("KERAS_BACKEND")
    if current != backend and "keras" not in sys.modules:
        if current:
            logger.debug("KERAS_BACKEND=%s: this command runs Keras on %s", current, backend)
        os.environ["KERAS_BACKEND"] = backend


if __name__ == "__main__":
    sys.exit(main())
