"""Keras causal LM -> ``.tflite`` with llm-tflite metadata."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import tempfile

from llm_tflite.litert.flatbuffer import check_writable, non_builtin_ops, write_atomic
from llm_tflite.litert.metadata import (BNTH_LAYOUT_FORMAT, FORMAT_VERSION, KV_CACHE_TYPES, MAX_BATCH_SIZE,
                                        RINGS_AS_CONTEXT_FORMAT, add_metadata)
from llm_tflite.errors import ConversionError, InvalidArgumentError, LLMTFLiteError, ModelSourceError
from llm_tflite.console import import_tensorflow, keras_backend, logger, progress, quiet_native, stop_if_interrupted
from llm_tflite.quantize.base import Quantizer
from llm_tflite.runtime import sampling
from llm_tflite.runtime.sampling import GENERATE_SAMPLERS
from llm_tflite.tokenizers.chat_template import ChatTemplate
from llm_tflite.families.loading import in_float32, load_model

EXPORT_MODES = ("prefill_decode", "generate")


def _stage(steps, text: str) -> None:
    """Show a conversion stage: on the progress bar, or as a log line where there is no bar (and stop
    there if a Ctrl+C came whose ``KeyboardInterrupt`` was lost, e.g. raised inside TensorFlow's ``__del__``)."""
    stop_if_interrupted()
    steps.set_postfix_str(text)
    if steps.disable:
        logger.info("convert: %s", text)


#: Chosen from measurements (docs/performance.md, "Prefill lengths"): every call reads all the weights,
#: and a 33-64-token prompt (a chat turn) ran as two or three calls without a 64.
DEFAULT_PREFILL_LENGTHS = (8, 32, 64, 128)


def default_decode_windows(context_length: int, batched: bool = False) -> list[int]:
    """Decode windows by default: powers of two from 128 below the context (128, 256, 512 for
    1,024; none up to 128), and from 32 in a file with ``decode_batch`` signatures (``batched``):
    a batched step reads every row's window: 8 rows at position 20 took 10.6 ms at window 32
    against 16.9 ms at 128, one row 3.8 against 4.5 ms (GPT-2 124M ``dynamic_int8``,
    ``benchmarks/batch_step.py``). One sequence gained 2-9 % at positions 8-108 (``bench``), which
    did not seem worth seven more signatures to convert in every file (two decode windows and their
    window prefill and prompt signatures; docs/serve.md, "Throughput against llama-server")."""
    windows, window = [], 32 if batched else 128
    while window < context_length:
        windows.append(window)
        window *= 2
    return windows


def default_batch_windows(context_length: int) -> list[int]:
    """Windows of the ``decode_batch_{B}`` signatures by default: the batched file's decode windows (32,
    64, 128, ...) and halfway between each and the next (48, 96, 192, ...), below the context. A batched
    step attends over the window of its furthest row for every row, which costs most of what a step
    adds per row: 8 rows of GPT-2 124M ``dynamic_int8`` took 7-8 % less time a step at position 40
    (window 48, not 64) and 70 (96, not 128), ``benchmarks/step_ab.py`` in both orders. One sequence
    gained 2 % at position 70 (window 96), so its own windows stay powers of two (each also brings
    window prefill and prompt signatures). 15 more signatures at 1,024 tokens with batch sizes 2, 4, 8
    (59 in all): conversion about a minute longer."""
    windows = default_decode_windows(context_length, batched=True)
    return sorted({*windows, *(w + w // 2 for w in windows if w + w // 2 < context_length)})


#: Room a file needs beyond its weights' bytes: graph, biases, a tied embedding held twice while
#: converting (GPT-2's token embedding is about 5% of GPT-2 XL).
SIZE_MARGIN = 1.15


def _file_bytes(strategy, weights: int, mode: str = "prefill_decode", frozen: bool = False) -> float:
    """Bytes of the largest flatbuffer a strategy needs for ``weights`` weights in ``mode``.

    Nothing (0) for weights bound into a ``prefill_decode`` graph: the files we write keep their weights
    after the flatbuffer once they pass ``flatbuffer.OUTSIDE_FROM``. A strategy that quantizes the
    float32 file (ai-edge-quantizer, not tried on files past 2 GiB) needs that file to be one
    flatbuffer, and so do weights frozen into the graph by TensorFlow's converter."""
    if mode == "prefill_decode" and not frozen and binds_weights(strategy) and not strategy.quantizes_float_file:
        return 0.0
    return weights * max(strategy.weight_bytes, 4.0 if strategy.quantizes_float_file else 0.0) * SIZE_MARGIN


def binds_weights(strategy) -> bool:
    """True if ``prefill_decode`` conversion binds the weights after converting the graph for this
    strategy; False for a strategy that only sets TensorFlow converter options (``configure``),
    which need the weights frozen into the graph."""
    from llm_tflite.quantize.base import QuantizationStrategy

    return strategy.bind_format != "float32" or type(strategy).configure is QuantizationStrategy.configure


def skip_freezing(converter, fn, tf) -> None:
    """Hand ``converter`` the graph of ``fn`` as it is instead of freezing it, when it has nothing
    to freeze (no variable, no function call to inline: graphs traced with the weights as inputs).

    Freezing runs Grappler, whose graph item allocates a fake feed tensor of every placeholder's
    shape, all at once: with the weights as placeholders, a second copy of them for each
    signature (Qwen 3 0.6B: +2.5 GiB for a 0.3 MB decode signature). The converted bytes are the
    same (``tests/test_bind.py::test_signatures_convert_unfrozen_to_the_same_bytes``). TensorFlow 2.19's ``TFLiteFrozenGraphConverterV2`` (pinned)."""
    graph_def = fn.graph.as_graph_def()
    if fn.captured_inputs or graph_def.library.function:
        return
    inputs = _graph_inputs(fn, tf)
    converter._freeze_concrete_function = lambda: (graph_def, inputs, fn.outputs, fn)


def _graph_inputs(fn, tf) -> list:
    """A traced function's inputs the converter takes (not the resource handles of captured variables)."""
    return [tensor for tensor in fn.inputs if tensor.dtype != tf.resource]


def weights_before_loading(model, family=None) -> int | None:
    """Weights of a preset or local preset directory, counted from its configuration by its family
    (``ModelFamily.count_weights``) without loading it; None when that cannot be known."""
    import json

    from llm_tflite.families.loading import is_preset_dir
    from llm_tflite.plugins.registry import presets, resolve_family

    if not isinstance(model, str):
        return None
    try:
        fam = resolve_family(model, family)
    except LLMTFLiteError:
        return None  # loading says what is wrong
    preset = presets().get(model)
    config, source = (preset.item.config, preset.item.source) if preset else (None, model)
    if config is None and isinstance(source, str) and is_preset_dir(source):
        try:
            with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
                config = json.load(f)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return fam.count_weights(config) if isinstance(config, dict) else None


def check_fits(weights: int, strategy, name: str = "this model", mode: str = "prefill_decode",
               frozen: bool = False) -> None:
    """``ModelTooLargeError`` now, before conversion, if the file (or the float32 file a strategy starts
    from) would pass the flatbuffer limit (``_file_bytes``); it names the strategies that fit."""
    from llm_tflite.errors import ModelTooLargeError
    from llm_tflite.litert import flatbuffer
    from llm_tflite.plugins.registry import strategies

    limit = flatbuffer.FLATBUFFER_LIMIT
    if _file_bytes(strategy, weights, mode, frozen) <= limit:
        return

    def size(n: float) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"

    count = f"{weights / 1e9:.2f} billion" if weights >= 1e9 else f"{weights / 1e6:.1f} million"
    capacity = f"{limit / 2**30:g} GiB" if limit >= 2**30 else size(limit)
    what = "the float32 file it quantizes" if strategy.quantizes_float_file and strategy.weight_bytes < 4 else "its file"
    fitting = [f"{s.name} (~{size(s.weight_bytes * weights)})"
               for s in (r.item for r in strategies().values())
               if mode in s.export_modes and _file_bytes(s, weights, mode, frozen) <= limit]
    advice = f"Strategies that fit: {', '.join(fitting)}." if fitting else "No registered strategy fits; use a smaller model."
    raise ModelTooLargeError(
        f"{name} has {count} weights: with --quantize {strategy.name}, {what} would need about "
        f"{size(_file_bytes(strategy, weights, mode, frozen))}, over the {capacity} a .tflite flatbuffer can address. {advice}"
    )


def _chat_template_text(value) -> str | None:
    """A chat template given as Jinja text (it holds ``{{`` or ``{%``), or as the path of a file holding it."""
    if value is None:
        return None
    if isinstance(value, os.PathLike) or (isinstance(value, str) and "{{" not in value and "{%" not in value):
        try:
            with open(value, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelSourceError(f"cannot read the chat template file {os.fspath(value)!r}: {e}") from e
    if not isinstance(value, str):
        raise InvalidArgumentError(f"chat_template must be Jinja text or a file's path, not {type(value).__name__}")
    ChatTemplate(value)  # compiles, within the limits every file's template meets
    return value


@dataclasses.dataclass
class ConversionResult:
    """Where a conversion wrote its file, how big it is, and the metadata inside."""

    path: str
    size_bytes: int
    metadata: dict


def _return_freed_memory() -> None:
    """Give the memory of freed weights back to the system: glibc keeps freed blocks below its mmap
    threshold (which grows to 32 MB as large blocks are freed) in its heaps, so a model's 12 MB
    matrices, once freed, would stay counted against the conversion. A no-op elsewhere."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl)
        pass


def _graph_of(fn, tf) -> tuple[bytes, list[str], list[str]]:
    """A traced signature as ``(GraphDef bytes, input tensor names, output tensor names)``: holds nothing of
    the model it was traced from (its weights are inputs)."""
    inputs = [tensor.name for tensor in _graph_inputs(fn, tf)]
    return fn.graph.as_graph_def().SerializeToString(), inputs, [tensor.name for tensor in fn.outputs]


def _function_of(graph: tuple, tf):
    """The concrete function of ``_graph_of``'s triple (TensorFlow's converter converts it to the same bytes:
    ``tests/test_bind.py``)."""
    data, inputs, outputs = graph
    graph_def = tf.compat.v1.GraphDef.FromString(data)
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    found = wrapped.graph.get_tensor_by_name
    return wrapped.prune([found(name) for name in inputs], [found(name) for name in outputs])


def _write_rows(path: str, variable, block_bytes: int = 64 << 20) -> None:
    """Write a Keras variable to an ``.npy`` file 64 MB of rows at a time (a 1 GB embedding is not
    copied whole out of TensorFlow beside itself), through ordinary writes: a disk that fills up
    raises ``OSError`` (a mapped sparse file would kill the process with SIGBUS)."""
    import numpy as np

    shape, dtype = tuple(int(d) for d in variable.shape), np.dtype(variable.dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        if len(shape) < 1 or not all(shape):
            f.write(np.asarray(variable.numpy(), dtype).tobytes())
            return
        rows = max(1, block_bytes // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
        for start in range(0, shape[0], rows):
            f.write(np.ascontiguousarray(np.asarray(variable.value[start : start + rows]), dtype).tobytes())


class _Binding:
    """Traced signatures whose graph, once converted, has ``weight_{i}`` inputs still to be bound
    (``llm_tflite.litert.bind``).

    ``spill`` writes the weights to ``.npy`` files in a temporary directory and maps them, so the
    Keras model can be let go before binding reads them (on POSIX the files are unlinked as soon as
    they are mapped). A context manager: the directory, if still there, is removed on exit."""

    def __init__(self, graphs: list, weights: list, fmt: str):
        #: ``(key, GraphDef, input names, output names)`` of each signature still to convert; then the
        #: converted, merged ``graph`` (``Converter._convert_graphs``)
        self.graphs, self.graph, self.weights, self.fmt = graphs, None, weights, fmt
        self._directory = None

    def spill(self, variables: list, where: str) -> None:
        """Write each variable to ``where`` (the output's directory: it must hold the file anyway) and
        read them from there; stays in memory, with a log line, where the disk has no room."""
        import shutil

        import numpy as np

        needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
        try:
            os.makedirs(where, exist_ok=True)
            free = shutil.disk_usage(where).free
            if free < needed * 1.1 + (1 << 30):
                raise OSError(f"{free / 1e9:.1f} GB free, the weights need {needed / 1e9:.1f} GB")
            self._directory = tempfile.TemporaryDirectory(prefix=".llm_tflite_weights_", dir=where)
            paths = []
            for i, variable in enumerate(variables):
                paths.append(os.path.join(self._directory.name, f"{i}.npy"))
                _write_rows(paths[-1], variable)
            mapped = [np.load(path, mmap_mode="r", allow_pickle=False) for path in paths]
        except OSError as e:  # no room, no permission: bind from memory, as for a model passed in
            logger.info("convert: cannot write the weights to %s (%s): binding them from memory", where, e)
            self.__exit__()
            return
        except BaseException:  # interrupted: nothing left beside the output
            self.__exit__()
            raise
        if os.name == "posix":  # mapped files live on unlinked: nothing is left behind, even if killed
            self.__exit__()
        self.weights = [lambda array=array: array for array in mapped]

    def bind(self) -> bytes:
        from llm_tflite.litert.bind import bind_weights

        weights, self.weights = self.weights, None
        bar = progress(total=len(weights), desc="binding weights", unit="weight", leave=False)
        try:
            return bind_weights(self.graph, weights, self.fmt, progress=lambda n: bar.update(n - bar.n))
        except (LLMTFLiteError, KeyboardInterrupt):
            raise
        except MemoryError as e:
            raise ConversionError("ran out of memory while binding the weights; convert on a machine with more "
                                  "memory, or with a smaller --quantize format") from e
        except Exception as e:  # a spilled file that cannot be read back, a graph bind cannot rewrite
            raise ConversionError(f"binding the weights failed: {type(e).__name__}: {str(e)[:300]}") from e
        finally:
            bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._directory is not None:
            directory, self._directory = self._directory, None
            try:
                directory.cleanup()
            except OSError as e:  # Windows: a file still mapped; the original error matters more
                logger.warning("convert: could not remove %s: %s", directory.name, e)


class Converter:
    """Converts a Keras causal LM to a self-contained ``.tflite`` file.

    Args:
        mode: ``"prefill_decode"`` (builtin ops, external KV cache) or ``"generate"``
            (whole loop in one graph, needs Flex + TF Text ops).
        quantize: a registered strategy name or a ``Quantizer``.
        context_length: KV-cache length (default: the model's, at most 1024).
        prefill_lengths: prompt lengths with a ``prefill_{L}`` signature (caches only, no logits:
            what generation and LiteRT-LM run a prompt with). Default ``DEFAULT_PREFILL_LENGTHS``.
        prompt_lengths: prefill lengths with a ``prompt_{L}`` signature, which runs a prompt's last
            chunk and outputs its last token's logits: a prompt of up to ``L`` tokens in one call, not
            a prefill and a ``decode`` that each read every weight. Default ``"auto"``: the shortest
            prefill length (short prompts, where that call is half the work; each signature adds
            graph bytes); ``()`` for none.
        score_lengths: lengths with a ``score_{L}`` signature, a prefill that also outputs every
            token's logits (``Sequence.feed``: eval, compare, scoring). Default ``"auto"``: the
            longest prefill length that fits the context; ``()`` for none (scoring then runs
            token by token).
        ring_caches: ``prefill_decode`` mode: a local (sliding-window) layer's caches hold its window
            plus the longest prefill, not the whole context (``families.ops.Ring``; Gemma 3: 5 of 6
            layers). Default True; False for the naive layout; ``"litertlm"``: rings stored in
            context-length-shaped buffers, which LiteRT-LM 0.18 runs to the file's context
            (``litert.metadata.stored_cache_shape``; float32 caches only), for rings of at most half
            the context (the graph's reshapes copy them: Gemma 3 270M in LiteRT-LM, 640-slot rings,
            decodes 1.37x the naive layout at a 4,096 context and 0.92x at 1,024).
        kv_cache: ``prefill_decode`` mode: the caches' type, ``"float32"`` (default) or ``"int8"``: int8
            values with one float32 scale per slot and head (``families.ops.Quantized``), about a
            quarter of the memory and of what a step reads late in the context. LiteRT-LM cannot run
            them (its engine takes every ``kv_cache_*`` input for a cache of the model's layout).
        decode_windows: ``decode_window_{W}`` signatures, which attend over the first ``W`` cache
            slots only, used while the position is below ``W`` (default ``"auto"``: 128, 256, ...
            below the context, from 32 with ``batch_sizes``; ``()`` for none); for a window of at most a quarter of the context,
            each prefill length below ``W`` gets a ``window_{W}_prefill_{L}`` too, for prompt chunks
            that end within ``W``. With ``"auto"``, the batched signatures also get the windows halfway
            between (48, 96, ...: ``default_batch_windows``); with a list, they get its windows.
        max_length: ``generate`` mode: total tokens (prompt + continuation).
        sampler: ``generate`` mode: ``greedy``, ``top_k`` or ``top_p``.
        seed: ``generate`` mode: seed of a random sampler.
        temperature, top_k, top_p: ``generate`` mode: the random sampler's settings, fixed in the graph.
        hidden_states: ``prefill_decode`` mode: also output the last hidden states (contrastive search).
        batch_sizes: ``prefill_decode`` mode: ``decode_batch_{B}`` signatures (one per size, and one
            per decode window), which decode ``B`` sequences in one call: what ``serve --parallel``
            uses to serve many users (``docs/serve.md``). Default none.
        calibration: for strategies that need it (``full_int8``): a text file or folder, or a
            ``llm_tflite.quantize.calibration.TextCalibration``.
        chat_template: a Jinja chat template (text, or the path of a ``.jinja`` file) the file carries
            instead of the model's own (``docs/chat.md``); default: the checkpoint's or the family's.

    Example:
        >>> Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", "model.tflite")  # doctest: +SKIP
    """

    def __init__(self, mode="prefill_decode", quantize="none", *, context_length=None,
                 prefill_lengths=DEFAULT_PREFILL_LENGTHS, score_lengths="auto", prompt_lengths="auto", ring_caches=True,
                 decode_windows="auto",
                 kv_cache="float32", max_length=100, sampler="greedy", seed=None,
                 temperature=sampling.TEMPERATURE, top_k=sampling.TOP_K, top_p=sampling.TOP_P,
                 calibration=None, hidden_states=False, chat_template=None, batch_sizes=()):
        if mode not in EXPORT_MODES:
            raise ValueError(f"unknown export mode {mode!r}; choose one of {', '.join(EXPORT_MODES)}")
        self.mode = mode
        if mode == "generate":
            if sampler not in GENERATE_SAMPLERS:
                raise ValueError(f"unknown generate-mode sampler {sampler!r}; choose one of "
                                 f"{', '.join(GENERATE_SAMPLERS)}")
            sampling.Sampler(sampler, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)  # validates
            if hidden_states:
                raise ValueError("hidden_states is a prefill_decode option (contrastive search runs in the runner)")
        self.sampler_settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.hidden_states = bool(hidden_states)
        self.quantizer = quantize if isinstance(quantize, Quantizer) else Quantizer(quantize)
        if mode not in self.quantizer.strategy.export_modes:
            raise ValueError(
                f"quantization strategy {self.quantizer.name!r} supports export modes "
                f"{', '.join(self.quantizer.strategy.export_modes)}, not {mode!r}; pick another strategy "
                "(llm-tflite plugins lists them) or another --mode"
            )
        calibration_source = None
        if self.quantizer.strategy.needs_calibration:
            from llm_tflite.errors import DataError

            if calibration is None:
                raise DataError(
                    f"quantization strategy {self.quantizer.name!r} needs calibration text; "
                    "pass calibration=PATH (--calibration PATH): a text file or folder"
                )
            if isinstance(calibration, (str, os.PathLike, list)):
                from llm_tflite.quantize.calibration import text_calibration

                calibration_source = [os.fspath(c) for c in calibration] if isinstance(calibration, list) \
                    else os.fspath(calibration)
                calibration = text_calibration(calibration)
        self.context_length = context_length
        self.prefill_lengths = tuple(sorted(set(int(n) for n in prefill_lengths)))
        if score_lengths != "auto" and not all(isinstance(n, int) and n >= 1 for n in score_lengths):
            raise InvalidArgumentError(f"score_lengths must be 'auto' or positive integers, got {score_lengths!r}")
        self.score_lengths = score_lengths if score_lengths == "auto" else tuple(sorted(set(score_lengths)))
        if prompt_lengths != "auto" and not set(prompt_lengths) <= set(self.prefill_lengths):
            raise InvalidArgumentError(f"prompt_lengths must be 'auto' or some of the prefill lengths "
                                       f"{list(self.prefill_lengths)}, got {prompt_lengths!r}")
        self.prompt_lengths = prompt_lengths if prompt_lengths == "auto" else tuple(sorted(set(prompt_lengths)))
        if ring_caches not in (True, False, "litertlm"):
            raise InvalidArgumentError(f"ring_caches must be True, False or 'litertlm', not {ring_caches!r}")
        self.ring_caches = ring_caches
        if kv_cache not in KV_CACHE_TYPES:
            raise InvalidArgumentError(f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, not {kv_cache!r}")
        if ring_caches == "litertlm" and kv_cache != "float32":
            raise InvalidArgumentError("ring_caches='litertlm' stores float32 caches the way LiteRT-LM reads them; "
                                       f"LiteRT-LM cannot run --kv-cache {kv_cache}")
        if kv_cache != "float32" and mode != "prefill_decode":
            raise InvalidArgumentError("kv_cache is a prefill_decode option (a generate graph keeps its caches inside)")
        self.kv_cache = kv_cache
        if decode_windows != "auto" and not all(isinstance(w, int) and w >= 1 for w in decode_windows):
            raise InvalidArgumentError(f"decode_windows must be 'auto' or positive integers, got {decode_windows!r}")
        self.decode_windows = decode_windows if decode_windows == "auto" else tuple(sorted(set(decode_windows)))
        if not all(isinstance(b, int) and 2 <= b <= MAX_BATCH_SIZE for b in batch_sizes):
            raise InvalidArgumentError(f"batch_sizes must be integers 2..{MAX_BATCH_SIZE}, got {batch_sizes!r}")
        if batch_sizes and mode != "prefill_decode":
            raise InvalidArgumentError("batch_sizes is a prefill_decode option")
        if batch_sizes and self.quantizer.strategy.needs_calibration:
            raise InvalidArgumentError(f"quantization strategy {self.quantizer.name!r} calibrates the single-sequence "
                                       "signatures only; convert without batch_sizes, or use dynamic_int8")
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.max_length = max_length
        self.sampler = sampler
        self.seed = seed
        self.calibration = calibration
        self.chat_template = _chat_template_text(chat_template)
        # What a TensorFlow child process needs to make this converter again (_convert_in_child)
        self._settings = {
            "mode": mode, "quantize": self.quantizer.name, "context_length": context_length,
            "prefill_lengths": list(self.prefill_lengths),
            "score_lengths": self.score_lengths if score_lengths == "auto" else list(self.score_lengths),
            "prompt_lengths": self.prompt_lengths if prompt_lengths == "auto" else list(self.prompt_lengths),
            "ring_caches": self.ring_caches, "kv_cache": self.kv_cache,
            "decode_windows": self.decode_windows if decode_windows == "auto" else list(self.decode_windows),
            "max_length": max_length, "sampler": sampler, "seed": seed, "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "calibration": calibration_source, "hidden_states": self.hidden_states,
            "chat_template": self.chat_template, "batch_sizes": list(self.batch_sizes),
        }
        self._portable = not self.quantizer.strategy.needs_calibration or calibration_source is not None

    def convert(self, model, output, *, family=None, random_weights=False) -> ConversionResult:
        """Load ``model``, convert it, quantize it and write ``output`` atomically.

        Args:
            model: preset name, handle, local preset directory or Keras model object.
            output: path of the ``.tflite`` file to write.
            family: family name when it cannot be told from ``model``.
            random_weights: use the architecture with random weights (benchmarks, offline).

        Returns:
            A ``ConversionResult``.
        """
        check_writable(output)  # before minutes of work, not after
        backend = keras_backend()
        if backend != "tensorflow":  # the converter traces TensorFlow graphs: a child process on TensorFlow
            return self._convert_in_child(model, output, family=family, random_weights=random_weights, backend=backend)
        name = model if isinstance(model, str) else "this model"
        weights = weights_before_loading(model, family)
        if weights is not None:  # too large for the strategy: said before loading a 1.5B model
            check_fits(weights, self.quantizer.strategy, name, self.mode)
        steps = progress(total=4, desc="convert", unit="step")
        try:
            _stage(steps, "loading model")
            fam, lm = load_model(model, family=family, random_weights=random_weights)
            lm = in_float32(lm)  # mixed_float16 / mixed_bfloat16 training: the file of the float32 copy
            if weights is None:
                check_fits(int(lm.count_params()), self.quantizer.strategy, name, self.mode)
            steps.update()
            _stage(steps, "tracing")
            # a model loaded here (or a float32 copy made here) is ours to let go before its weights are
            # bound: they are spilled to a file beside the output and read back one at a time
            spill_to = os.path.dirname(os.path.abspath(output)) if lm is not model else None
            try:
                metadata = self._metadata(fam, lm)
                tflite_model = self._convert(fam, lm, metadata, steps, spill_to)
            except (LLMTFLiteError, ValueError, KeyboardInterrupt):
                raise
            except Exception as e:  # family code (possibly a plugin's) failed while tracing
                raise ConversionError(
                    f"family {fam.name!r} failed while building the {self.mode} graph: {type(e).__name__}: "
                    f"{str(e)[:500]}. If the family comes from a plugin (llm-tflite plugins shows which), "
                    "report it there; --mode prefill_decode works for every family."
                ) from e
            del lm  # a 1.5B model's float32 copy is 6 GB
            gc.collect()
            _return_freed_memory()
            if isinstance(tflite_model, _Binding):
                with tflite_model:
                    self._convert_graphs(fam, tflite_model)  # after the model went: what TensorFlow keeps adds less
                    tflite_model = tflite_model.bind()
            steps.update()
            _stage(steps, "quantizing")
            tflite_model = self._quantize(tflite_model, metadata)
            _stage(steps, "writing")
            tflite_model = add_metadata(tflite_model, metadata, as_bytes=False)  # no third copy of a 2.4 GB file
            write_atomic(output, tflite_model)
            steps.update()
        finally:
            steps.close()
        return ConversionResult(os.fspath(output), len(tflite_model), metadata)

    def _convert_in_child(self, model, output, *, family, random_weights, backend) -> ConversionResult:
        """Keras runs on ``backend`` here: convert in a TensorFlow child process (``export/on_tensorflow.py``),
        a model object through a temporary preset (LoRA merged in float32)."""
        import json
        import subprocess
        import sys

        from llm_tflite import errors
        from llm_tflite.families.loading import save_preset

        if not self._portable:
            raise InvalidArgumentError(f"Keras runs on {backend} in this process, so conversion runs in a TensorFlow "
                                       "child process, which needs calibration as a file, folder or list of them")
        steps = progress(total=1, desc="convert", unit="step")
        try:
            with tempfile.TemporaryDirectory(prefix="llm_tflite_convert_") as tmp:
                source = model
                if not isinstance(model, (str, os.PathLike)):
                    if not hasattr(model, "save_to_preset"):
                        raise ModelSourceError(f"a {type(model).__name__} from a {backend} process converts through a "
                                               "preset, and it has no save_to_preset: pass a KerasHub CausalLM or a "
                                               "preset directory")
                    _stage(steps, f"Keras runs on {backend} here: saving the model to a temporary preset")
                    source = os.path.join(tmp, "preset")
                    save_preset(model, source)
                _stage(steps, f"Keras runs on {backend} here: converting on TensorFlow in a child process")
                spec = {"settings": self._settings, "model": os.fspath(source), "output": os.fspath(output),
                        "family": family, "random_weights": bool(random_weights),
                        "result": os.path.join(tmp, "result.json")}
                with open(os.path.join(tmp, "spec.json"), "w", encoding="utf-8") as f:
                    json.dump(spec, f)
                # TensorFlow on the CPU (conversion needs no accelerator, and JAX holds the GPUs' memory); the
                # parent's import path, so a plugin or family it imports from a folder is there too
                env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "",
                       "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
                done = subprocess.run([sys.executable, "-m", "llm_tflite.export.on_tensorflow",
                                       os.path.join(tmp, "spec.json")], env=env)
                try:
                    with open(spec["result"], encoding="utf-8") as f:
                        result = json.load(f)
                except (OSError, ValueError):
                    raise ConversionError(
                        f"the TensorFlow child process converting for this {backend} process ended with exit code "
                        f"{done.returncode} and no result (its output is above); convert from a shell with "
                        "`llm-tflite convert`, which runs on TensorFlow") from None
            steps.update()
        finally:
            steps.close()
        if "error" in result:
            kind = getattr(errors, result["error"], None)
            raise (kind if isinstance(kind, type) and issubclass(kind, LLMTFLiteError) else ConversionError)(
                result["message"])
        return ConversionResult(result["path"], result["size_bytes"], result["metadata"])

    @staticmethod
    def _run_converter(converter) -> bytes:
        try:
            with quiet_native():  # the converter's C++ logs statistics and sessions to stderr
                return converter.convert()
        except Exception as e:
            raise ConversionError(f"TensorFlow Lite conversion failed: {type(e).__name__}: {str(e)[:2000]}") from e

    def _metadata(self, fam, lm) -> dict:
        context_length = min(self.context_length or min(fam.max_context_length(lm), 1024), fam.max_context_length(lm))
        record = {
            "format": FORMAT_VERSION,
            "family": fam.name,
            "export_mode": self.mode,
            "quantization": self.quantizer.name,
            "tokenizer": fam.tokenizer_spec(lm),
            **fam.special_tokens(lm),
            "model": fam.model_config(lm),
        }
        chat = fam.chat_format(lm)
        if self.chat_template is not None:
            special = fam.special_tokens(lm)
            chat = {**(chat or {"bos_token": None, "eos_token": None,
                                "stop_token_ids": [] if special.get("eos_id") is None else [special["eos_id"]]}),
                    "template": self.chat_template}
        if chat is not None:
            ChatTemplate(chat["template"])  # a template that does not compile fails the conversion, not the app
            record["chat"] = chat
        if self.mode == "prefill_decode":
            if self.batch_sizes and not fam.batched_decode:
                raise ConversionError(f"family {fam.name!r} does not say its forward pass can decode a batch "
                                      "(ModelFamily.batched_decode); convert without batch_sizes")
            spec = self._kv_cache_spec(fam, lm)
            prefill_lengths = [n for n in self.prefill_lengths if n <= context_length]
            score_lengths = [n for n in (prefill_lengths[-1:] if self.score_lengths == "auto" else self.score_lengths)
                             if n <= context_length]
            kv_cache = dataclasses.asdict(spec)
            # rings stored as [1, 1, context, n] (stored_cache_shape): a ring's heads * slots * dim divides the context
            as_context = self.ring_caches == "litertlm"
            multiple = context_length // math.gcd(context_length, spec.num_kv_heads * spec.head_dim) if as_context else 1
            if spec.sliding_windows:
                kv_cache["sliding_windows"] = list(spec.sliding_windows)
                kv_cache["lengths"] = spec.cache_lengths(context_length, max([1, *prefill_lengths, *score_lengths]),
                                                         bool(self.ring_caches), multiple)
                if as_context:  # the graph's reshapes copy a ring: in LiteRT-LM it pays where it halves the cache
                    kv_cache["lengths"] = [n if 2 * n <= context_length else context_length for n in kv_cache["lengths"]]
            else:
                del kv_cache["sliding_windows"]
            if spec.dtype == "float32":  # the type every reader knows
                del kv_cache["dtype"]
            # readers before format 5 would expect values [1, heads, head_dim, C] and call the file damaged
            record["format"] = BNTH_LAYOUT_FORMAT
            if as_context and min(kv_cache.get("lengths", [context_length])) < context_length:
                kv_cache["rings_as_context"] = True  # a format-5 reader would find the shapes wrong
                record["format"] = RINGS_AS_CONTEXT_FORMAT
            auto = self.decode_windows == "auto"
            windows = [w for w in (default_decode_windows(context_length, bool(self.batch_sizes)) if auto
                                   else self.decode_windows) if w < context_length]
            record.update(
                context_length=context_length,
                prefill_lengths=prefill_lengths,
                score_lengths=score_lengths,
                decode_windows=windows,
                # a window of at most a quarter of the cache saves three quarters of its reads; a larger
                # one saves less than its signatures cost (conversion time, and bytes: full_int8's
                # per-tensor scales put the shipped GPT-2 over its size target at context 256)
                prefill_windows=[w for w in windows if prefill_lengths and min(prefill_lengths) < w
                                 and 4 * w <= context_length],
                # prompt_{L}: a prompt's last chunk and its next-token logits in one call
                prompt_lengths=prefill_lengths[:1] if self.prompt_lengths == "auto" else
                [n for n in self.prompt_lengths if n in prefill_lengths],
                decode_batch_sizes=list(self.batch_sizes),
                kv_cache=kv_cache,
                kv_cache_layout="bnth",  # families.ops: keys and values [1, heads, C, head_dim]
                default_sampler="greedy",
                hidden_states=self.hidden_states,
            )
            if self.batch_sizes:  # the decode_batch_{B} signatures' windows (readers without it: the decode windows)
                record["decode_batch_windows"] = default_batch_windows(context_length) if auto else windows
        else:
            record.update(context_length=self.max_length, max_length=self.max_length,
                          default_sampler=self.sampler, seed=self.seed, sampler_settings=self.sampler_settings)
        return record

    def _quantize(self, tflite_model: bytes, metadata: dict) -> bytes:
        strategy = self.quantizer.strategy
        try:
            if strategy.needs_calibration:
                samples = self.calibration.signature_inputs(add_metadata(tflite_model, metadata))
                return self.quantizer.postprocess(tflite_model, samples)
            return self.quantizer.postprocess(tflite_model)
        except (LLMTFLiteError, KeyboardInterrupt):
            raise
        except Exception as e:  # a strategy (possibly a plugin's) failed
            raise ConversionError(
                f"quantization strategy {strategy.name!r} failed: {type(e).__name__}: {str(e)[:500]}. "
                "Try another strategy (llm-tflite plugins lists them); if it comes from a plugin, report it there."
            ) from e

    def _kv_cache_spec(self, fam, lm):
        """The family's cache spec with this converter's cache type."""
        return dataclasses.replace(fam.kv_cache_spec(lm), dtype=self.kv_cache)

    def _traced(self, tf, fam, lm, metadata, weights=None):
        """``(key, concrete function, input names, output names)`` per signature, traced one at a time
        (``weights``: with the weights as inputs, ``prefill_decode.signature_function``)."""
        from llm_tflite.export.prefill_decode import (input_names, output_names, signature_function, signatures,
                                                      weight_names)

        spec = self._kv_cache_spec(fam, lm)
        extra = weight_names(weights) if weights is not None else []
        table = signatures(metadata["prefill_lengths"], metadata["decode_windows"], metadata["decode_batch_sizes"],
                           metadata["score_lengths"], metadata["prefill_windows"], metadata["prompt_lengths"],
                           metadata.get("decode_batch_windows", []))
        for key, (length, window, rows, logits, last) in table.items():
            logger.debug("convert: tracing %s", key)
            hidden = self.hidden_states and not last
            with quiet_native():  # tracing (and freezing) runs Grappler, which logs its sessions
                fn = signature_function(fam, lm, spec, metadata["context_length"], length, hidden,
                                        window, weights, rows, logits, metadata["kv_cache"].get("lengths"), last,
                                        metadata["kv_cache"].get("rings_as_context", False))
            yield key, fn, input_names(spec, rows, last) + extra, output_names(spec, hidden, rows, logits)
            del fn

    def _converted(self, tf, fn, frozen: bool) -> bytes:
        """One signature's function through TensorFlow's converter (``frozen``: weights frozen into it)."""
        from llm_tflite.litert.rewrite import int8_casts_to_quantization

        stop_if_interrupted()  # a conversion of many signatures stops at the next one
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
        if frozen:
            self.quantizer.configure(converter, self.calibration)
        else:
            # With the weights as inputs, FULLY_CONNECTED(x * norm_scale, W) would become
            # FULLY_CONNECTED(x, W * norm_scale): a MUL over the whole weight at every call, and
            # a weight bind_weights cannot store as int8 (RMSNorm families: Gemma's head, Qwen's MLP).
            converter._experimental_disable_fuse_mul_and_fc = True
            skip_freezing(converter, fn, tf)
        converted = self._run_converter(converter)
        return int8_casts_to_quantization(converted) if self.kv_cache == "int8" else converted  # casts XNNPACK runs

    def _trace_then_spill(self, tf, fam, lm, metadata, spill_to=None) -> "_Binding":
        """Every signature traced without its weights, as a ``GraphDef`` (nothing of the model), and the
        weights to bind after TensorFlow's converter has made the graph (``_Binding``): memory and time
        that grow with the model, not 25x it.

        With ``spill_to`` (a directory), the weights are written there, so the caller can let the Keras
        model go before the graphs are converted and the weights bound. TensorFlow's converter keeps
        memory after every call (tensorflow/tensorflow#122598): converting Qwen 3 0.6B's 20 signatures
        beside the loaded model added ~92 MB each, up to a 5.2 GiB peak; converted after it, they hold
        1.0-1.3 GiB in all, and the peak (3.8-3.9 GiB) is loading the model and spilling its weights
        (docs/performance.md)."""
        from llm_tflite.export.prefill_decode import model_variables

        weights = model_variables(lm)
        graphs = [(key, _graph_of(fn, tf), inputs, outputs)
                  for key, fn, inputs, outputs in self._traced(tf, fam, lm, metadata, weights)]
        binding = _Binding(graphs, [variable.numpy for variable in weights], self.quantizer.strategy.bind_format)
        if spill_to is not None:
            binding.spill(weights, spill_to)
        return binding

    def _convert_graphs(self, fam, binding: "_Binding") -> None:
        """``binding``'s traced signatures through TensorFlow's converter, merged as they come; each is
        checked for non-builtin ops as it comes (the first bad one fails, before the rest convert)."""
        from llm_tflite.litert.rewrite import SignatureMerger

        tf = import_tensorflow()
        merger = SignatureMerger()
        while binding.graphs:
            key, graph, inputs, outputs = binding.graphs.pop(0)
            logger.debug("convert: signature %s", key)
            try:
                converted = self._converted(tf, _function_of(graph, tf), False)
            except (LLMTFLiteError, KeyboardInterrupt):
                raise
            except Exception as e:  # rebuilding the traced graph, or a rewrite of its flatbuffer
                raise ConversionError(f"converting signature {key!r} failed: {type(e).__name__}: {str(e)[:500]}") from e
            self._check_builtin(fam, converted)
            merger.add(key, converted, inputs, outputs)
        binding.graph = merger.result()

    def _convert_frozen(self, tf, fam, lm, metadata) -> bytes:
        """One frozen function and conversion per signature, merged as they come (a SavedModel holding
        every signature's frozen weights would pass protobuf's 2 GB limit for GPT-2 base)."""
        from llm_tflite.litert.rewrite import SignatureMerger

        merger = SignatureMerger()  # shared weights are held once
        for key, fn, inputs, outputs in self._traced(tf, fam, lm, metadata):
            merger.add(key, self._converted(tf, fn, True), inputs, outputs)
            del fn
        return merger.result()

    def _convert(self, fam, lm, metadata, steps, spill_to=None) -> "bytes | _Binding":
        """The converted model, or (weights bound after the graph) the ``_Binding`` that makes it."""
        tf = import_tensorflow()

        if self.mode == "prefill_decode":
            steps.update()
            _stage(steps, "converting")
            tflite_model = None
            if binds_weights(self.quantizer.strategy):
                from llm_tflite.export.prefill_decode import CapturedStateError

                try:
                    tflite_model = self._trace_then_spill(tf, fam, lm, metadata, spill_to)
                except CapturedStateError as e:
                    logger.debug("convert: %s; freezing the weights into the graph instead", e)
                    # frozen weights go through TensorFlow's converter: one flatbuffer, held to its limit
                    check_fits(int(lm.count_params()), self.quantizer.strategy, mode=self.mode, frozen=True)
            if tflite_model is None:
                tflite_model = self._convert_frozen(tf, fam, lm, metadata)
        else:
            fn = fam.generate_function(lm, max_length=self.max_length, sampler=self.sampler, seed=self.seed,
                                       **self.sampler_settings)
            signatures = {"serving_default": fn}
            steps.update()
            _stage(steps, "converting")
            with tempfile.TemporaryDirectory(prefix="llm_tflite_") as saved_model_dir:
                module = tf.Module()
                module.tokenizer = lm.preprocessor.tokenizer  # the lookup tables the graph reads
                with quiet_native():
                    tf.saved_model.save(module, saved_model_dir, signatures=signatures)
                    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                                         signature_keys=list(signatures))
                from llm_tflite.export.generate import configure_generate_converter

                configure_generate_converter(converter)
                self.quantizer.configure(converter, self.calibration)
                tflite_model = self._run_converter(converter)
        if self.mode == "prefill_decode" and not isinstance(tflite_model, _Binding):
            self._check_builtin(fam, tflite_model)
        return tflite_model

    @staticmethod
    def _check_builtin(fam, tflite_model: bytes) -> None:
        bad = non_builtin_ops(tflite_model)
        if bad:
            raise ConversionError(
                f"the prefill_decode graph needs non-builtin ops {sorted(bad)}; family "
                f"{fam.name!r} must express its forward pass with builtin TFLite ops"
            )
