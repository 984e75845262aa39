"""What llm-tflite shows on the console: our log lines and progress bars, nothing else.

Library code logs through the ``llm_tflite`` logger (never ``print``); the CLI shows
INFO lines, ``-q`` only warnings, ``-v`` everything including what TensorFlow, absl and
LiteRT write from native code. Without ``-v`` that native chatter (CUDA registration,
"computation placer", converter statistics, "Created TensorFlow Lite XNNPACK delegate")
is silenced where it is produced: TensorFlow's import, TFLite conversion and interpreter
creation (and, for LiteRT's exit-time destructors, after Python exits: ``quiet_native_exit``).

Ctrl+C at the console is also handled here: a command's handler remembers it (``catch_interrupts``), so
one whose ``KeyboardInterrupt`` Python dropped still stops long work where it commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import warnings

from tqdm.auto import tqdm

logger = logging.getLogger("llm_tflite")

#: Set to ``1`` to see TensorFlow's and LiteRT's own messages (``llm-tflite -v`` sets it).
VERBOSE_ENV = "LLM_TFLITE_VERBOSE"

_quiet_lock = threading.RLock()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def progress(iterable=None, **kwargs):
    """``tqdm`` with project defaults: off when stderr is not a terminal or ``LLM_TFLITE_NO_PROGRESS=1``."""
    kwargs.setdefault("disable", True if os.environ.get("LLM_TFLITE_NO_PROGRESS") == "1" else None)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


@contextlib.contextmanager
def quiet_native():
    """Discard what native code writes to file descriptor 2 during the block (unless verbose).

    Python-level errors still propagate as exceptions; only the C++ logging of TensorFlow,
    absl and LiteRT is dropped. Re-entrant and serialised, because file descriptors are
    process-wide.
    """
    if verbose():
        yield
        return
    with _quiet_lock:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded interpreters): nothing to silence
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)


_exit_silenced = False


def quiet_native_exit() -> None:
    """Discard what native code writes to stderr once Python exits (unless verbose).

    LiteRT's static destructors log "DestroyAccelerator" lines after the interpreter has
    finished; no object lifetime can move them earlier. Called by whatever creates a LiteRT
    environment; Python's own output is flushed first.
    """
    global _exit_silenced
    if _exit_silenced or verbose():
        return
    _exit_silenced = True

    def silence():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        except OSError:
            pass

    import atexit

    atexit.register(silence)


class _Interrupts:
    received = False


def catch_interrupts():
    """Make Ctrl+C stick for a command: the handler raises ``KeyboardInterrupt`` *and* remembers it.

    Python drops an exception raised inside ``__del__`` (TensorFlow's resources have them) and
    native code (TensorFlow's converter) may turn one into an ordinary error; long work calls
    :func:`stop_if_interrupted` where it commits, so neither loses the Ctrl+C, and the dropped
    exception's "Exception ignored" traceback is not shown. Returns what :func:`release_interrupts`
    gives back (``None`` off the main thread, where nothing is installed).
    """
    def handler(signum, frame):
        _Interrupts.received = True
        raise KeyboardInterrupt

    def unraisable(info, hook=sys.unraisablehook):
        if not (info.exc_type is KeyboardInterrupt and _Interrupts.received):
            hook(info)

    if threading.current_thread() is not threading.main_thread():
        return None  # nothing installed, and the main thread's record left as it is
    previous = (signal.signal(signal.SIGINT, handler), sys.unraisablehook, _Interrupts.received)
    sys.unraisablehook = unraisable
    _Interrupts.received = False
    return previous


def release_interrupts(previous) -> None:
    """Give back what :func:`catch_interrupts` replaced (in-process callers: tests, notebooks, a command
    run inside another), the record of an earlier Ctrl+C included."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous[0])
        sys.unraisablehook, _Interrupts.received = previous[1], previous[2]


def interrupted() -> bool:
    """Whether Ctrl+C came since :func:`catch_interrupts`, even if its ``KeyboardInterrupt`` was lost."""
    return _Interrupts.received


def stop_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl+C came whose exception something swallowed."""
    if _Interrupts.received:
        raise KeyboardInterrupt


#: What to install for conversion, training and generate-mode files (the runtime alone needs none of it).
CONVERT_EXTRA = "pip install 'llm-tflite[convert]'"


def import_tensorflow():
    """TensorFlow, imported with its start-up chatter silenced and its Python loggers at ERROR.

    Raises ``UnsupportedRuntimeError`` naming the extra to install when TensorFlow is missing
    (``pip install llm-tflite`` installs only what running ``prefill_decode`` files needs).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet_native():
            import tensorflow as tf
    except ImportError as e:
        from llm_tflite.errors import UnsupportedRuntimeError

        raise UnsupportedRuntimeError(
            f"this needs TensorFlow, which this installation lacks ({e}): {CONVERT_EXTRA} adds TensorFlow 2.19, "
            "tensorflow-text, Keras and KerasHub (running prefill_decode files needs none of them)"
        ) from e
    with quiet_native():
        tf.config.list_physical_devices()  # device discovery logs its CUDA failures once, here
    if not verbose():
        tf.get_logger().setLevel(logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:  # pragma: no cover - absl comes with TensorFlow
            pass
    return tf


def keras_backend() -> str:
    """The backend Keras runs on in this process: the loaded Keras' own, else the one ``KERAS_BACKEND``
    will give it (TensorFlow when unset)."""
    loaded = sys.modules.get("keras")
    if loaded is not None and hasattr(loaded, "backend"):
        return loaded.backend.backend()
    return os.environ.get("KERAS_BACKEND") or "tensorflow"


def virtual_cpu_devices(environ=None) -> int:
    """How many CPU devices ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` asks JAX for (0 if none)."""
    flags = (os.environ if environ is None else environ).get("XLA_FLAGS", "")
    found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", flags)
    return int(found[-1]) if found else 0


def xla_cpu_threads(environ=None) -> int:
    """The threads XLA's CPU client runs device programs on: ``NPROC`` if set, else the cores."""
    value = (os.environ if environ is None else environ).get("NPROC", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def threads_for_cpu_devices(devices: int) -> int:
    """Threads XLA's CPU client should have for ``devices`` CPU devices that run collectives.

    Each device's program holds one pool thread while it waits in a collective for the others.
    With as many threads as devices (2 virtual devices on 2 cores), two programs in flight can hold
    every thread, each waiting for a device whose turn never comes: XLA aborts the process after
    40 s ("Termination timeout for all gather"). Measured here under load: 1 abort in 5 runs of
    tests/test_backends.py's two-device training with 2 threads, none in 6 with 8."""
    return 4 * devices


def make_room_for_cpu_devices(environ=None) -> None:
    """Give XLA's CPU client ``threads_for_cpu_devices`` threads when ``XLA_FLAGS`` asks for several
    virtual CPU devices and neither ``NPROC`` nor the cores provide them. XLA reads ``NPROC`` once,
    when JAX first makes its CPU client: this runs before Keras on JAX is imported."""
    environ = os.environ if environ is None else environ
    devices = virtual_cpu_devices(environ)
    if devices > 1 and "NPROC" not in environ and xla_cpu_threads(environ) < threads_for_cpu_devices(devices):
        environ["NPROC"] = str(threads_for_cpu_devices(devices))
        logger.debug("NPROC=%s: %d virtual CPU devices need that many XLA threads", environ["NPROC"], devices)


#: The backends training runs on (``finetune --backend``); conversion and evaluation need TensorFlow.
TRAINING_BACKENDS = ("tensorflow", "jax")


def _jax_has_devices() -> bool:
    """True once JAX has made its clients (after which ``NPROC`` no longer counts)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # no public way to ask without making them

    return xla_bridge.backends_are_initialized()


def import_keras(backends=("tensorflow",)):
    """Keras on one of ``backends``, or ``UnsupportedRuntimeError`` saying how to get it.

    The KerasHub tutorials set ``KERAS_BACKEND=jax``: training runs on it (``backends=TRAINING_BACKENDS``);
    ``Converter.convert`` runs a TensorFlow child process for it; the rest goes through TensorFlow.
    """
    from llm_tflite.errors import UnsupportedRuntimeError

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    backend = keras_backend()
    if backend not in backends:
        raise UnsupportedRuntimeError(
            f"Keras uses the {backend!r} backend (KERAS_BACKEND), but this runs on {' or '.join(backends)}: set "
            f"KERAS_BACKEND={backends[0]} before Python starts (or before the first `import keras`), then retry."
        )
    if backend == "jax" and not _jax_has_devices():
        make_room_for_cpu_devices()
    import_tensorflow()  # KerasHub's tokenizers run on TensorFlow whatever the backend
    try:
        with quiet_native():
            import keras
            import keras_hub  # noqa: F401  (every family loads through it)
    except ImportError as e:
        extra = "pip install 'llm-tflite[jax]'" if backend == "jax" else CONVERT_EXTRA
        raise UnsupportedRuntimeError(f"this needs Keras and KerasHub on {backend} ({e}): {extra}") from e
    if not verbose():
        # Keras warns that task models "have no build()": harmless, and not the user's to fix.
        warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer", category=UserWarning)
    return keras
