"""Where XNNPACK keeps a model's packed weights: a file per model in the user's cache, or memory.

XNNPACK repacks every weight matrix into its kernels' layout when a model loads. Held in
memory, that packed copy sits beside the model's own weights (peak memory ≈ twice the
weights). Written to a cache file on the first load, later loads memory-map the packed copy
and never touch the model's weights, as LiteRT-LM does with its ``.xnnpack_cache``: loading
takes milliseconds and memory is about one copy of the weights.

XNNPACK looks packed weights up by tensor position, not content, so a cache file must only
ever be used with the model it was built from: the file name carries the model's checksum
(its record's ``sha256``), the LiteRT version (XNNPACK's packing changes between builds) and
the CPU (kernels differ by instruction set). A file is built under a unique temporary name and
renamed into place once the model has loaded, so concurrent loads (``serve --workers``, two
commands at once) never see each other's half-written files.

Settings (``InterpreterRunner(weight_cache=...)``): ``"auto"`` — the directory
``$LLM_TFLITE_CACHE_DIR/xnnpack`` (default ``~/.cache/llm-tflite/xnnpack``, or under
``$XDG_CACHE_HOME``), ``"memory"`` — nothing written, or a directory. The files are safe to
delete at any time; the next load rebuilds its own.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import time

from llm_tflite.console import logger

IN_MEMORY = ":memory:"
CACHE_DIR_ENV = "LLM_TFLITE_CACHE_DIR"
_STALE_SECONDS = 24 * 3600  # a temporary file this old was left by a killed process


def default_cache_dir() -> str:
    """``$LLM_TFLITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-tflite``, else ``~/.cache/llm-tflite``."""
    base = os.environ.get(CACHE_DIR_ENV)
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm-tflite")
    return base


def _cpu_fingerprint() -> str:
    """The machine and, on Linux, its instruction-set flags: XNNPACK picks kernels (and layouts) by them."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def _runtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - any failure: a name that never matches a stale file
        return "unknown"


class WeightCache:
    """The cache file one model load uses: ``path`` to give the runtime, ``commit()`` once it loaded.

    ``setting``: ``"auto"``, ``"memory"`` or a directory. ``model_digest``: the model's checksum
    (None: a file without one, which gets the in-memory cache).
    """

    def __init__(self, setting: str, model_digest: str | None):
        self.final = self.building = None
        self.path = IN_MEMORY
        if setting == "memory" or model_digest is None:
            return
        directory = os.path.join(default_cache_dir(), "xnnpack") if setting == "auto" else os.fspath(setting)
        name = f"{model_digest[:32]}-litert{_runtime_version()}-{_cpu_fingerprint()}.xnnpack"
        final = os.path.join(directory, name)
        if os.path.isfile(final):
            self.final = self.path = final
            return
        try:
            os.makedirs(directory, exist_ok=True)
            self._remove_stale(directory)
            building = f"{final}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            with open(building, "xb"):
                pass  # the runtime fills it
        except OSError as e:
            logger.warning("cannot write the weight cache in %s (%s); packed weights stay in memory this time "
                           "(set %s to a writable directory, or weight_cache='memory')", directory, e, CACHE_DIR_ENV)
            return
        self.final, self.building, self.path = final, building, building

    @staticmethod
    def _remove_stale(directory: str) -> None:
        now = time.time()
        for entry in os.scandir(directory):
            if entry.name.endswith(".tmp"):
                try:
                    if now - entry.stat().st_mtime > _STALE_SECONDS:
                        os.unlink(entry.path)
                except OSError:
                    pass

    def commit(self) -> None:
        """The model loaded: move a freshly built file into place (atomically; a concurrent twin may win)."""
        if self.building:
            try:
                os.replace(self.building, self.final)
            except OSError as e:
                logger.warning("could not keep the weight cache %s: %s", self.final, e)
            self.building = None

    def discard(self) -> None:
        """The model did not load: remove a half-built file."""
        if self.building:
            try:
                os.unlink(self.building)
            except OSError:
                pass
            self.building = None
