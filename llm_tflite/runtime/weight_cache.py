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

Files whose weights sit behind a constant ``DEQUANTIZE`` (``weight_only_int8``; see
``llm_tflite.litert.expand``) would be expanded to float32 by the runtime once per signature;
``model_file`` expands them once instead and keeps the float32 copy beside the packed weights
(``models/``), so every later load maps it like any float32 model. A bundle's ``.tflite``
section is kept there too: the runtime maps whole files, or copies a buffer it is given.

Settings (``InterpreterRunner(weight_cache=...)``): ``"auto"`` — the directories
``$LLM_TFLITE_CACHE_DIR/xnnpack`` and ``.../models`` (default ``~/.cache/llm-tflite/``, or
under ``$XDG_CACHE_HOME``), ``"memory"`` — nothing written, or a directory for both. The files
are safe to delete at any time; the next load rebuilds its own.
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


def _cache_dir(setting: str, kind: str) -> str:
    return os.path.join(default_cache_dir(), kind) if setting == "auto" else os.fspath(setting)


def _temporary_name(final: str) -> str:
    """A name no concurrent load uses, in ``final``'s directory (``.tmp``: removed when stale)."""
    return f"{final}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _remove_stale(directory: str) -> None:
    """Remove temporary files a killed process left in ``directory``."""
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name.endswith(".tmp"):
            try:
                if now - entry.stat().st_mtime > _STALE_SECONDS:
                    os.unlink(entry.path)
            except OSError:
                pass


def can_expand(data, added: int, where: str) -> bool:
    """Whether ``data`` with ``added`` bytes of expanded float32 weights still fits a flatbuffer
    (else a warning: LiteRT will expand them itself, once per signature)."""
    from llm_tflite.litert.flatbuffer import FLATBUFFER_LIMIT, weight_bytes

    if weight_bytes(data) + added < FLATBUFFER_LIMIT:
        return True
    logger.warning("%s keeps its weights behind DEQUANTIZE; expanded to float32 (%.1f GB) they would not fit "
                   "a .tflite, so LiteRT expands them once per signature: expect several times that in memory. "
                   "Convert with --quantize dynamic_int8 to run it compactly", where, added / 1e9)
    return False


def model_file(data, record: dict, setting: str, where: str, expand: bool) -> tuple[bytes | None, str | None, dict]:
    """A file the runtime can map for the verified model ``data`` that it cannot map as it is: a
    bundle's ``.tflite`` section (the runtime takes a whole file or a copy in bytes), and, with
    ``expand``, the constant ``DEQUANTIZE`` weights it would expand once per signature expanded
    once (``llm_tflite.litert.expand``). Kept in the cache's ``models/`` and verified (checksum,
    the same record otherwise) at every use, rebuilt when it does not pass.

    Returns ``(None, path, record)``, or ``(bytes, None, record)`` with ``setting="memory"`` or an
    unwritable directory; ``record`` is the file's (an expanded model has its own checksum).
    """
    from llm_tflite.errors import ModelFileError
    from llm_tflite.litert.expand import expand_dequantized
    from llm_tflite.litert.flatbuffer import map_model_file
    from llm_tflite.litert.metadata import CHECKSUM_KEY, pack_with_metadata, read_verified_metadata

    def same_model(other: dict) -> bool:  # an expanded model has its own checksum; a section has the bundle's
        ignored = {CHECKSUM_KEY} if expand else set()
        return {k: v for k, v in other.items() if k not in ignored} == \
            {k: v for k, v in record.items() if k not in ignored}

    digest = record.get(CHECKSUM_KEY)
    final = None
    if setting != "memory" and digest is not None:
        final = os.path.join(_cache_dir(setting, "models"), f"{digest[:32]}{'-float32' if expand else ''}.tflite")
        if os.path.isfile(final):
            try:
                cached = read_verified_metadata(map_model_file(final), repr(final))
                if same_model(cached):
                    return None, final, cached
                logger.warning("%s was made from another model; rebuilding it", final)
            except ModelFileError as e:
                logger.warning("%s; rebuilding it", e)
    if expand:
        logger.info("%s keeps its weights behind DEQUANTIZE (%s): expanding them to float32 once, not once per "
                    "signature", where, record.get("quantization"))
        model = pack_with_metadata(expand_dequantized(data), record)
        record = read_verified_metadata(model, where)
    else:
        model = bytes(data)
    if final is None:
        return model, None, record
    building = _temporary_name(final)
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        _remove_stale(os.path.dirname(final))
        with open(building, "xb") as f:
            f.write(model)
        os.replace(building, final)
    except OSError as e:
        logger.warning("cannot keep the model file in %s (%s); it stays in memory this time (set %s to a "
                       "writable directory, or weight_cache='memory')", os.path.dirname(final), e, CACHE_DIR_ENV)
        try:
            os.unlink(building)
        except OSError:
            pass
        return model, None, record
    return None, final, record


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
        directory = _cache_dir(setting, "xnnpack")
        name = f"{model_digest[:32]}-litert{_runtime_version()}-{_cpu_fingerprint()}.xnnpack"
        final = os.path.join(directory, name)
        if os.path.isfile(final):
            self.final = self.path = final
            return
        try:
            os.makedirs(directory, exist_ok=True)
            _remove_stale(directory)
            building = _temporary_name(final)
            with open(building, "xb"):
                pass  # the runtime fills it
        except OSError as e:
            logger.warning("cannot write the weight cache in %s (%s); packed weights stay in memory this time "
                           "(set %s to a writable directory, or weight_cache='memory')", directory, e, CACHE_DIR_ENV)
            return
        self.final, self.building, self.path = final, building, building

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
