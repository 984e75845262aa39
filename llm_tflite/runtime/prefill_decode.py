"""Driving a ``prefill_decode`` file: the ``prefill_{L}`` / ``decode`` signatures and the KV caches.

The twin of ``llm_tflite.export.prefill_decode``, which writes these signatures.

The file runs in LiteRT's ``CompiledModel``. Each sequence's KV caches live in the
runtime's own tensor buffers, bound as both input and output of every call, so the
graph updates them in place: a decode step moves one token's keys and values, not the
whole cache through Python (LiteRT-LM's engine does the same).

Threading model: one engine (one compiled model) per runner, shared by every
``Sequence``; each ``Sequence`` owns its cache buffers and position, and every signature
call runs under the engine's lock, so the runtime is never driven from two threads at once
and concurrent or interleaved generations never see each other's caches.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Callable, Iterator

import numpy as np

from llm_tflite.console import quiet_native, quiet_native_exit
from llm_tflite.errors import ContextLengthError, InvalidArgumentError, ModelFileError, RuntimeFailure
from llm_tflite.litert.flatbuffer import release_mapped_file
from llm_tflite.litert.metadata import CACHE_AXES, stored_cache_shape
from llm_tflite.runtime.engine import ModelFile, SequenceEngine
from llm_tflite.runtime.host_memory import host_view

#: ``observer(signature_name, inputs)`` sees every signature call's inputs, caches as arrays
#: (calibration records them).
Observer = Callable[[str, dict], None]


_environment = None
_environment_lock = threading.Lock()


def litert_environment():
    """One LiteRT environment for the process (accelerator registration happens once), made quietly."""
    global _environment
    with _environment_lock:
        if _environment is None:
            import os

            import ai_edge_litert
            from ai_edge_litert.environment import Environment, EnvironmentOptions

            with quiet_native():  # as CompiledModel makes its default one
                _environment = Environment.create(options=EnvironmentOptions(
                    runtime_path=os.path.dirname(os.path.abspath(ai_edge_litert.__file__))))
            quiet_native_exit()
        return _environment


def compiled_model(path, data, num_threads, weight_cache_path: str):
    """The file at ``path`` (or ``data``) compiled for the CPU: through LiteRT's C API, which runs a
    model without holding the GIL (``runtime/native.py``), else through ``ai_edge_litert``'s Python
    wrapper. Both raise ``ValueError`` / ``RuntimeError`` for a model the runtime cannot load."""
    from llm_tflite.runtime.native import NativeModel, NativeUnavailable

    try:
        return NativeModel(path, data, num_threads=num_threads, weight_cache_path=weight_cache_path)
    except NativeUnavailable:
        pass
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    options = Options(cpu_options=CpuOptions(num_threads=num_threads, xnnpack_weight_cache_path=weight_cache_path))
    if data is None:
        return CompiledModel.from_file(path, environment=litert_environment(), options=options)
    return CompiledModel.from_buffer(data, environment=litert_environment(), options=options)


def _cache_axes(layout: str | None, name: str) -> tuple[str, ...]:
    """The axes of cache input ``name`` (``kv_cache_{k|v}_{i}[_scale][_row{b}]``; a scale's ``dim`` is 1)."""
    return CACHE_AXES[layout][name.startswith("kv_cache_v_")]


def decode_batch_name(rows: int, window: int | None = None) -> str:
    """``decode_batch_{rows}`` (``_window_{window}``): the batched decode signature's name."""
    return f"decode_batch_{int(rows)}" + ("" if window is None else f"_window_{int(window)}")


def prefill_window_name(length: int, window: int) -> str:
    """``window_{window}_prefill_{length}``: a prefill that attends over the first ``window`` slots,
    for chunks ending below it. Not ``prefill_...``: LiteRT-LM takes every signature whose name
    starts with "prefill" for a prefill of the length of its positions (one per length)."""
    return f"window_{int(window)}_prefill_{int(length)}"


def prompt_name(length: int, window: int | None = None) -> str:
    """``prompt_{length}`` (``window_{window}_prompt_{length}``): a prompt's last chunk, which outputs
    the logits of the token at input ``last`` alone (``llm_tflite.export.prefill_decode``)."""
    return f"prompt_{int(length)}" if window is None else f"window_{int(window)}_prompt_{int(length)}"


def caches_only(name: str) -> bool:
    """Whether signature ``name`` outputs the caches only (a prefill, in files since format 3)."""
    return name.startswith("prefill_") or "_prefill_" in name


#: What a signature call costs beyond the tokens it computes, in tokens (``PrefillDecodeEngine.chunks``).
CALL_COST = 16
#: Calls whose buffers ``PrefillDecodeEngine._bind`` keeps as the runtime's C arrays: a server's batched
#: rows change as requests come and go, and each window is a signature of its own.
BINDINGS = 32


def row_cache_name(name: str, row: int) -> str:
    """A batched signature's input for row ``row`` of cache ``name``: ``kv_cache_k_0_row3``."""
    return f"{name}_row{row}"


class State(dict):
    """A sequence's cache buffers by name (what the signatures take), with NumPy views of them
    (``runtime.host_memory``; None where the runtime gives none) and ``written``: one past the
    furthest slot position any call wrote, padding included (what reusing it must clear).

    Its buffers are fixed when it is made (calls write into them): the engine keeps the runtime's
    arrays of a state's buffers between calls (``PrefillDecodeEngine._bind``)."""

    __slots__ = ("views", "written", "__weakref__")

    def __init__(self, buffers: dict, views: dict | None):
        super().__init__(buffers)
        self.views, self.written = views, 0

    def _fixed(self, *args, **kwargs):
        raise TypeError("a State's buffers are fixed when it is made; make another (PrefillDecodeEngine.new_state)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _fixed


class PrefillDecodeEngine(SequenceEngine):
    """The compiled model of a ``prefill_decode`` file and its signatures; stateless between calls.

    A sequence's state is a dict of cache name -> ``TensorBuffer`` (``new_state``).
    """

    kind = "prefill_decode"

    @classmethod
    def open(cls, model: ModelFile, *, num_threads: int, weight_cache: str) -> "PrefillDecodeEngine":
        """The engine of a verified file; the runtime maps a plain file itself. Weights it would
        expand once per signature (weight_only_int8) are expanded once, and a bundle's model section
        is kept, in a file of the cache it maps instead."""
        from llm_tflite.litert.expand import expansion_bytes
        from llm_tflite.runtime.weight_cache import can_expand, model_file

        where = repr(model.path)
        source, model_path, record = None, None, model.metadata
        added = expansion_bytes(model.data, where)
        expand = bool(added) and can_expand(model.data, added, where)
        if expand or model.is_bundle:
            source, model_path, record = model_file(model.data, model.metadata, weight_cache, where, expand)
            model.data = None  # a bundle's section copy is not needed while the runtime loads the model
        engine = cls(source, record, num_threads, model.path, weight_cache, model_path)
        engine.check_token_ids(model.tokenizer, model.metadata, model.path)
        return engine

    def __init__(self, data: bytes | None, metadata: dict, num_threads, path, weight_cache: str = "memory",
                 model_path=None, first_state: "State | None" = None):
        """``data``: the model's bytes (a bundle's section), or None to map the file at ``model_path``
        (default ``path``, which names the model in messages; another file for an expanded copy:
        ``llm_tflite.runtime.weight_cache.model_file``). ``weight_cache``: where XNNPACK keeps
        packed weights (``llm_tflite.runtime.weight_cache``). ``first_state``: cache buffers no
        sequence uses for the load's first call (``twin``), instead of new ones kept as a spare."""
        from llm_tflite.runtime.weight_cache import WeightCache

        self.model_data = data  # the runtime reads the model from this buffer: keep it alive
        self.num_threads = num_threads
        self._opened = (data, metadata, path, weight_cache, model_path)  # for ``twin``
        mapped = os.fspath(model_path or path)
        #: The model's bytes (about what one call reads of its weights).
        self.model_bytes = len(data) if data is not None else os.path.getsize(mapped)
        cache = WeightCache(weight_cache, metadata.get("sha256"))
        try:
            with quiet_native():  # accelerator registration, "Created TensorFlow Lite XNNPACK delegate for CPU."
                # XNNPACK packs each signature's weights for its kernels into its weight cache, so the
                # prefill and decode signatures share one packed copy (and a cache file is mapped, not rebuilt).
                # Mapped by the runtime when data is None: pages it never reads (packed weights) cost nothing.
                self.model = compiled_model(mapped, data, num_threads, cache.path)
                signatures = self.model.get_signature_list()
                self.input_details = {name: self.model.get_input_tensor_details(name) for name in signatures}
                self.output_details = {name: self.model.get_output_tensor_details(name) for name in signatures}
        except (ValueError, RuntimeError) as e:
            cache.discard()
            raise ModelFileError(f"the runtime cannot load {path!r}: {e}; re-convert it") from e
        if data is None:
            release_mapped_file(mapped)  # what the load read of the weights' pages (see its docstring)
        try:
            self._prepare(metadata, path, first_state)
            if cache.building:
                # XNNPACK packs a signature's weights at its first run: pack them all before the file
                # is shared, so a later load finds every signature's weights in it.
                self._run_every_signature(path)
                if data is None:
                    release_mapped_file(mapped)  # packing read every weight
        except BaseException:
            cache.discard()
            raise
        cache.commit()
        #: The packed-weights cache file this engine maps (``:memory:`` when none).
        self.weight_cache_path = cache.final or cache.path

    def twin(self, num_threads: int) -> "PrefillDecodeEngine":
        """Another compiled model of the same file with ``num_threads`` threads, which runs calls at the
        same time as this one (``BatchingEngine``'s lanes). It maps the same file and packed-weights
        cache (with ``weight_cache="memory"`` it packs its own copy) and takes this engine's states:
        they are the runtime's host buffers, which any compiled model of the file can bind. Its own
        cost is the runtime's working memory for the file's signatures (about 240 MB for GPT-2 124M
        with 59 signatures, RssAnon: ``benchmarks/batch_step.py --lanes-memory``)."""
        data, metadata, path, weight_cache, model_path = self._opened
        state = self.new_state()  # the twin's first call writes slot 0 of a spare, cleared when it is next used
        try:
            return type(self)(data, metadata, num_threads, path, weight_cache, model_path, first_state=state)
        finally:
            self.recycle(state)

    def check_token_ids(self, tokenizer, metadata: dict, path) -> None:
        """The tokenizer and special tokens must fit the logits the graph produces."""
        if tokenizer.vocab_size > self.vocab_size:
            raise ModelFileError(f"{path!r}: its tokenizer has {tokenizer.vocab_size} tokens but the model "
                                 f"scores {self.vocab_size}; the file is inconsistent, re-convert it")
        for name in ("bos_id", "eos_id"):
            value = metadata.get(name)
            if value is not None and value >= self.vocab_size:
                raise ModelFileError(f"{path!r}: {name} {value} is outside the vocabulary of {self.vocab_size}; "
                                     "re-convert it")

    def sequence(self, observer=None) -> "Sequence":
        """A fresh ``Sequence`` on this engine."""
        return Sequence(self, observer)

    def _prepare(self, metadata: dict, path, first_state: "State | None" = None) -> None:
        self.context_length = self.token_budget = int(metadata["context_length"])
        self.prefill_lengths = sorted(int(n) for n in metadata.get("prefill_lengths", []))
        #: Whether ``prefill_{L}`` outputs logits: in files written before ``score_{L}`` existed
        #: (before format 3, ``llm_tflite.export.prefill_decode``), which score with their prefill signatures.
        self.prefill_logits = "score_lengths" not in metadata
        #: Lengths of the prefill signatures that output every token's logits (``score_signature``).
        self.score_lengths = self.prefill_lengths if self.prefill_logits else \
            sorted(int(n) for n in metadata["score_lengths"])
        self.decode_windows = sorted(int(w) for w in metadata.get("decode_windows", []))
        #: Windows with ``window_{W}_prefill_{L}`` signatures (for each prefill length below ``W``).
        self.prefill_windows = sorted(int(w) for w in metadata.get("prefill_windows", []))
        #: Lengths with ``prompt_{L}`` (files before them: a prompt's last token runs through ``decode``).
        self.prompt_lengths = sorted(int(n) for n in metadata.get("prompt_lengths", []))
        #: ``decode_batch_{B}`` signatures: ``decode_rows`` runs up to the largest at once
        self.batch_sizes = sorted(int(b) for b in metadata.get("decode_batch_sizes", []))
        #: Their windows (files before ``decode_batch_windows``: the decode windows).
        self.batch_windows = sorted(int(w) for w in metadata.get("decode_batch_windows", self.decode_windows))
        missing = [s for s in [*self._signature_lengths(), *self._batch_signatures()] if s not in self.input_details]
        if missing:
            raise ModelFileError(f"{path!r} lacks signatures {missing}; re-convert it")
        self.has_hidden_states = bool(metadata.get("hidden_states", False))
        shapes = self._check_graph(metadata, path)
        #: Each cache's shape (``[1, heads, slots, dim]`` in the "bnth" layout, however the file stores it:
        #: ``stored_cache_shape``) and type.
        self.cache_specs = {
            name: (tuple(shapes[name]), np.dtype(detail["dtype"]))
            for name, detail in self.input_details["decode"].items() if name.startswith("kv_cache_")
        }
        #: Each cache's axis over positions (slots).
        self.position_axes = {name: _cache_axes(metadata.get("kv_cache_layout"), name).index("slots")
                              for name in self.cache_specs}
        #: Whether some local layer keeps only its last slots, and the fewest slots a ring keeps beyond its
        #: layer's window (``Sequence.can_rewind_to``).
        lengths = metadata["kv_cache"].get("lengths", [])
        windows = metadata["kv_cache"].get("sliding_windows", [None] * len(lengths))
        self.has_rings = any(n != self.context_length for n in lengths)
        self.ring_slack = min((n - w for n, w in zip(lengths, windows) if n != self.context_length), default=None)
        self.vocab_size = int(self.output_details["decode"]["logits"]["shape"][-1])
        self._lock = threading.Lock()
        #: The C arrays of recent calls' buffers (``_bind``): (signature, its states' ids) -> (weak
        #: references to the states, binding), the least recent first.
        self._bindings: collections.OrderedDict = collections.OrderedDict()
        #: Cache buffers of finished sequences, for new ones (``recycle``): at most as many as a batched
        #: step runs (a server's slots come and go together), else one.
        self._spares: list[State] = []
        self.max_spares = max([1, *self.batch_sizes])
        try:
            with quiet_native():
                # A signature's buffers are made at its first call: a prefill_128 a prompt never needs
                # would hold 128 rows of logits.
                self._io = {}
                # XNNPACK is applied at a signature's first run (and announces it on stderr): do that
                # here, quietly, so a graph the runtime cannot run fails in the constructor. The signature
                # a first token uses: each one's working memory is allocated when it first runs.
                state = first_state if first_state is not None else self.new_state()
                self.call(self.decode_signature(0), dict(tokens=np.zeros((1, 1), np.int32),
                                                         input_pos=np.zeros(1, np.int32), caches=state))
                # The runtime holds on to the buffers a signature last ran with: the first sequence
                # reuses these (zeroed) instead of allocating another cache beside them.
                if first_state is None:
                    self._spares.append(state)
        except (RuntimeFailure, ValueError, RuntimeError) as e:
            raise ModelFileError(f"the runtime cannot run {path!r}: {e.__cause__ or e}; re-convert it") from e

    def _run_every_signature(self, path) -> None:
        state = self.new_state()
        try:
            with quiet_native():
                for name, length in self._signature_lengths().items():
                    self.call(name, dict(tokens=np.zeros((1, length), np.int32),
                                         input_pos=np.arange(length, dtype=np.int32), last=np.zeros(1, np.int32),
                                         caches=state))
                for name, rows in self._batch_signatures().items():
                    self.call(name, dict(tokens=np.zeros((rows, 1), np.int32), input_pos=np.zeros(rows, np.int32),
                                         caches=self._row_caches([state] * rows)))
            self._spares.append(state)  # the first sequence's cache, not another one beside it
        except (RuntimeFailure, ValueError, RuntimeError) as e:
            raise ModelFileError(f"the runtime cannot run {path!r}: {e.__cause__ or e}; re-convert it") from e

    def _batch_signatures(self) -> dict[str, int]:
        """The batched decode signatures the record lists, and the rows each takes."""
        return {decode_batch_name(b, w): b for b in self.batch_sizes for w in [None, *self.batch_windows]}

    def _signature_lengths(self) -> dict[str, int]:
        """The signatures the record lists, and the tokens each takes."""
        return {"decode": 1, **{f"decode_window_{w}": 1 for w in self.decode_windows},
                **{f"prefill_{n}": n for n in self.prefill_lengths},
                **{prefill_window_name(n, w): n for n in self.prefill_lengths for w in self.prefill_windows if n < w},
                **self._prompt_signatures(),
                **{self.score_signature(n): n for n in self.score_lengths}}

    def _prompt_signatures(self) -> dict[str, int]:
        """The ``prompt_{L}`` / ``window_{W}_prompt_{L}`` signatures, and the tokens each takes."""
        return {prompt_name(n, w): n for n in self.prompt_lengths for w in [None, *self.prefill_windows]
                if w is None or n < w}

    def score_signature(self, length: int) -> str:
        """The signature that runs ``length`` tokens and outputs their logits."""
        return f"prefill_{length}" if self.prefill_logits else f"score_{length}"

    def outputs_logits(self, name: str) -> bool:
        return self.prefill_logits or not caches_only(name)

    def prefill_signature(self, length: int, position: int) -> str:
        """The cheapest caches-only prefill of ``length`` tokens from ``position``: one attending over
        the smallest window the chunk ends within, else over the whole cache."""
        window = self._prefill_window(length, position)
        return f"prefill_{length}" if window is None else prefill_window_name(length, window)

    def prompt_signature(self, length: int, position: int) -> str:
        """The ``prompt_{L}`` (windowed as ``prefill_signature`` chooses) of a prompt's last chunk."""
        return prompt_name(length, self._prefill_window(length, position))

    def _prefill_window(self, length: int, position: int) -> int | None:
        return next((w for w in self.prefill_windows if length < w and position + length <= w), None)

    def cache_bytes(self, window: int | None = None) -> int:
        """Bytes of the caches a call attending over the first ``window`` slots reads (None: all):
        ``window`` slots of each cache, or all of a shorter one (a local layer's ring)."""
        total = 0
        for name, (shape, dtype) in self.cache_specs.items():
            slots = shape[self.position_axes[name]]
            total += int(np.prod(shape)) // slots * min(slots, window or slots) * dtype.itemsize
        return total

    def decode_window(self, position: int) -> int | None:
        """The smallest decode window above ``position`` (the cheapest signature for a token there), or None."""
        return next((w for w in self.decode_windows if position < w), None)

    def decode_signature(self, position: int) -> str:
        window = self.decode_window(position)
        return "decode" if window is None else f"decode_window_{window}"

    def batch_window(self, position: int) -> int | None:
        """The smallest batched decode window above ``position`` (the cheapest batched call for rows
        whose furthest position is ``position``), or None."""
        return next((w for w in self.batch_windows if position < w), None)

    def decode_batch_signature(self, rows: int, position: int) -> str:
        """The ``decode_batch_{rows}`` signature for rows whose furthest position is ``position``."""
        return decode_batch_name(rows, self.batch_window(position))

    def batch_rows(self, count: int) -> int:
        """The rows of the batched signature that decodes ``count`` sequences: the smallest size that
        holds them all, else the largest (run it more than once); 1 when the file has none."""
        return next((b for b in self.batch_sizes if b >= count), self.batch_sizes[-1] if self.batch_sizes else 1)

    @staticmethod
    def _row_caches(states: list[dict]) -> dict:
        return {row_cache_name(name, row): buffer for row, state in enumerate(states) for name, buffer in state.items()}

    def decode_rows(self, states: list[dict], tokens, positions, pad: dict) -> np.ndarray:
        """One decode step of several sequences in one call: ``tokens[i]`` at ``positions[i]`` into
        ``states[i]``; their logits ``[len(states), vocab]``.

        ``len(states)`` must be ``batch_rows(len(states))`` or less; the signature's other rows
        decode a dummy token into ``pad`` (a state no sequence uses, shared by those rows)."""
        count = len(states)
        rows = self.batch_rows(count)
        if count > rows or rows == 1:
            raise ValueError(f"{count} sequences do not fit one batched decode (sizes {self.batch_sizes})")
        token_rows = np.zeros((rows, 1), np.int32)
        token_rows[:count, 0] = tokens
        position_rows = np.zeros(rows, np.int32)
        position_rows[:count] = positions
        name = self.decode_batch_signature(rows, int(max(positions)))
        for state, position in zip([*states, pad], [*positions, 0]):  # before: a failing call may write some
            if isinstance(state, State):
                state.written = max(state.written, int(position) + 1)
        result = self.call(name, dict(tokens=token_rows, input_pos=position_rows,
                                      caches=list(states) + [pad] * (rows - count)))
        return result["logits"].reshape(rows, -1)[:count]

    def _named(self, name: str, caches) -> tuple[dict, dict]:
        """``name``'s input and output buffers by name: its own (``_io``) and ``caches``' (a state, a list of
        states or buffer dicts for a batched call's rows, or a dict of buffers by name)."""
        io = self._io[name]
        buffers = self._row_caches(caches) if isinstance(caches, list) else caches
        return {**io["inputs"], **buffers}, {**io["outputs"], **buffers}

    def _bind(self, name: str, caches) -> tuple:
        """(Holding the lock, after ``call`` made ``name``'s own buffers) ``_named``'s buffers as the
        runtime's C arrays. For states, the arrays of the last ``BINDINGS`` calls are kept and used again
        while the same state objects (checked by identity) come back: an 8-row call passes about 390
        buffers, whose dicts and arrays took 0.19 ms of the 0.41 ms of Python around the call (GPT-2 124M;
        a step of 8 rows computes for about 7 ms)."""
        states = caches if isinstance(caches, list) else [caches]
        if not all(isinstance(state, State) for state in states):
            return self.model.bind(name, *self._named(name, caches))
        key = (name, *map(id, states))
        kept = self._bindings.get(key)
        if kept is not None and all(ref() is state for ref, state in zip(kept[0], states)):
            self._bindings.move_to_end(key)
            return kept[1]
        bound = self.model.bind(name, *self._named(name, caches))
        self._bindings[key] = ([weakref.ref(state) for state in states], bound)
        self._bindings.move_to_end(key)  # a key kept for other objects stays where it was
        while len(self._bindings) > BINDINGS:
            self._bindings.popitem(last=False)
        return bound

    def _signature_buffers(self, name: str) -> dict:
        """The buffers of a signature's small tensors, made once: tokens, positions (a prompt's ``last``),
        logits (hidden states)."""
        outputs = [key for key in ("logits", "hidden_states") if key in self.output_details[name]]
        inputs = [key for key in ("tokens", "input_pos", "last") if key in self.input_details[name]]
        return {
            "inputs": {key: self.model.create_input_buffer_by_name(name, key) for key in inputs},
            "outputs": {key: self.model.create_output_buffer_by_name(name, key) for key in outputs},
            "shapes": {key: tuple(self.output_details[name][key]["shape"]) for key in outputs},
        }

    def _check_graph(self, metadata: dict, path) -> dict[str, list[int]]:
        """The signatures' tensors must be what the record says: a mismatch would generate garbage. Returns
        each cache's shape (as the graph computes with it; the file may store it otherwise)."""
        spec = metadata["kv_cache"]
        heads, dim, context = spec["num_kv_heads"], spec["head_dim"], self.context_length
        shapes = {}  # cache name -> shape; a local layer's may be shorter (a ring: llm_tflite.families.ops.Ring)
        quantized = spec.get("dtype", "float32") == "int8"  # int8 values, a float32 scale per slot and head
        layout = metadata.get("kv_cache_layout")
        for i, length in enumerate(spec.get("lengths", [context] * spec["num_layers"])):
            for name in [f"kv_cache_{kind}_{i}{scale}" for scale in ("", "_scale")[:1 + quantized] for kind in "kv"]:
                sizes = {"batch": 1, "heads": heads, "slots": length, "dim": 1 if name.endswith("_scale") else dim}
                shapes[name] = [sizes[axis] for axis in _cache_axes(layout, name)]
        logical, shapes = shapes, {name: stored_cache_shape(shape, context, spec.get("rings_as_context", False))
                                   for name, shape in shapes.items()}
        types = {name: "int8" if quantized and not name.endswith("_scale") else "float32" for name in shapes}
        caches = list(shapes)
        cache_shape = shapes["kv_cache_k_0"]
        hidden = {"hidden_states"} if self.has_hidden_states else set()
        prompts = self._prompt_signatures()
        for name, length in self._signature_lengths().items():
            inputs, outputs = self.input_details[name], self.output_details[name]
            prompt = name in prompts  # the logits of input last's token alone
            expected = {"tokens": [1, length], "input_pos": [length], **({"last": [1]} if prompt else {}), **shapes}
            found = {key: list(value["shape"]) for key, value in inputs.items()}
            same_types = all(np.dtype(inputs[c]["dtype"]) == types[c] and list(outputs[c]["shape"]) == expected[c]
                             for c in caches if c in inputs and c in outputs)
            scores = {"logits"} if prompt else {"logits", *hidden} if self.outputs_logits(name) else set()
            if found != expected or set(outputs) != {*scores, *caches} or not same_types or \
                    (scores and list(outputs["logits"]["shape"][:2]) != [1, 1 if prompt else length]):
                raise ModelFileError(
                    f"{path!r}: signature {name!r} does not match the file's record (context {self.context_length}, "
                    f"cache {cache_shape}, {len(caches)} caches); the file is damaged or inconsistent, re-convert it"
                )
        for name, rows in self._batch_signatures().items():
            inputs, outputs = self.input_details[name], self.output_details[name]
            row_caches = {row_cache_name(c, b): shapes[c] for c in caches for b in range(rows)}
            expected = {"tokens": [rows, 1], "input_pos": [rows], **row_caches}
            found = {key: list(value["shape"]) for key, value in inputs.items()}
            if found != expected or set(outputs) != {"logits", *row_caches, *hidden} or \
                    list(outputs["logits"]["shape"][:2]) != [rows, 1] or \
                    any(np.dtype(inputs[row_cache_name(c, b)]["dtype"]) != types[c]
                        or list(outputs[row_cache_name(c, b)]["shape"]) != shapes[c] for c in caches for b in range(rows)):
                raise ModelFileError(f"{path!r}: signature {name!r} does not match the file's record ({rows} rows, "
                                     f"cache {cache_shape}); the file is damaged or inconsistent, re-convert it")
        return logical

    # -- sequence state: cache buffers ---------------------------------------------
    def new_state(self) -> State:
        """Zeroed cache buffers for a new sequence: a finished sequence's (``recycle``), cleared
        where it wrote, or new ones."""
        with self._lock:
            state = self._spares.pop() if self._spares else None
            if state is None:
                buffers = {name: self.model.create_input_buffer_by_name("decode", name) for name in self.cache_specs}
                views = {name: host_view(buffer, *self.cache_specs[name]) for name, buffer in buffers.items()}
                state = State(buffers, None if any(view is None for view in views.values()) else views)
                state.written = self.context_length  # new buffers hold anything (host_view's test pattern)
        self._clear(state)  # no call uses these buffers: the other sequences' calls run meanwhile
        return state

    def reserve(self, count: int) -> None:
        """Have cache buffers ready for ``count`` sequences at once (at most ``max_spares``), so the
        first ones to arrive allocate and clear none (a server's slots, made before it takes requests)."""
        states = [self.new_state() for _ in range(min(count, self.max_spares))]  # the spares first, then new ones
        for state in states:
            self.recycle(state)

    def recycle(self, state: State) -> None:
        """``state``'s sequence is gone: keep its buffers for a next ``new_state`` (up to ``max_spares``;
        the first sequence reuses the constructor's). Called by a finalizer, at any point of any thread,
        so it takes no lock (a list's append and pop are atomic; a race may keep one more)."""
        if len(self._spares) < self.max_spares and isinstance(state, State):
            self._spares.append(state)

    def _clear(self, state: State) -> None:
        """Zero the slots ``state``'s calls wrote: with views, those slots alone (a new sequence after a
        short one clears a fraction of its caches); else every buffer, through the runtime."""
        for name, (shape, dtype) in self.cache_specs.items():
            if state.views is None:
                state[name].write(np.zeros(shape, dtype))
                continue
            axis = self.position_axes[name]
            view = state.views[name]
            if state.written >= shape[axis]:  # every slot (a ring's written positions wrap around it)
                view.fill(0)
            elif state.written:
                view[(slice(None),) * axis + (slice(0, state.written),)] = 0
        state.written = 0

    def read_state(self, state: dict) -> dict[str, np.ndarray]:
        """The caches of ``state`` as arrays (copies)."""
        with self._lock:
            if getattr(state, "views", None) is not None:
                return {name: view.copy() for name, view in state.views.items()}
            return {name: buffer.read(int(np.prod(self.cache_specs[name][0])), self.cache_specs[name][1])
                    .reshape(self.cache_specs[name][0]) for name, buffer in state.items()}

    def write_state(self, state: dict, arrays: dict[str, np.ndarray], written: int | None = None) -> None:
        """Fill ``state``'s cache buffers with ``arrays`` (each of its cache's shape and type), of which
        slots from ``written`` on are zeros (None: any slot may hold something)."""
        with self._lock:
            for name, buffer in state.items():
                array = np.ascontiguousarray(arrays[name], self.cache_specs[name][1])
                if getattr(state, "views", None) is not None:
                    np.copyto(state.views[name], array.reshape(self.cache_specs[name][0]))
                else:
                    buffer.write(array)
            if isinstance(state, State):
                state.written = self.context_length if written is None else written

    def copy_state(self, state: State) -> State:
        """New cache buffers holding what ``state``'s hold (a fork)."""
        twin = self.new_state()
        views = getattr(state, "views", None)
        self.write_state(twin, self.read_state(state) if views is None else views, written=state.written)
        return twin

    def chunks(self, count: int, position: int, lengths: list[int]) -> list[int]:
        """Signature lengths of the calls that run ``count`` tokens from ``position``, among ``lengths``
        (of prefill or score signatures) and 1 (decode): the cheapest plan, the last call padded.

        A call costs its padded length plus ``CALL_COST`` tokens: every call reads all the weights
        (GPT-2 124M float32: a prefill_8 call takes as long as ~20 tokens of a long prefill). So 63
        tokens run as 32 + 32 (one token of padding), not 32 + 8 + 8 + 8 + 8; 64 as 32 + 32, not one
        128 call doing twice the work; 100 as one 128 call; a single token through decode."""
        end = position + count
        best = [(0, 0)]  # tokens left -> (cost, first call's length)
        for left in range(1, count + 1):
            fitting = [1, *(n for n in lengths if end - left + n <= self.context_length)]
            cost, n = min((CALL_COST + n + best[max(left - n, 0)][0], -n) for n in fitting)  # ties: longest first
            best.append((cost, -n))
        plan, left = [], count
        while left:
            plan.append(best[left][1])
            left = max(left - plan[-1], 0)
        return plan

    def last_chunks(self, count: int, position: int) -> list[tuple[int, int]]:
        """``(signature length, tokens)`` of the calls that run ``count`` tokens from ``position`` and
        give the last one's logits (``feed_last``): prefill chunks (``chunks``), then a ``prompt_{L}``
        for the last tokens, or ``decode`` for the last alone, whichever plan costs least. With
        ``prompt_{8}``: 8 tokens are one call; 64, with 32 and 128 beside it, 32 + 32 (31 tokens) and
        ``decode``."""
        best = None
        for last in range(1, min(count, max(self.prompt_lengths, default=1)) + 1):
            start = position + count - last
            final = min([n for n in self.prompt_lengths if n >= last and start + n <= self.context_length]
                        + ([1] if last == 1 else []), default=None)
            if final is None:
                continue
            plan, left = [], count - last
            for length in self.chunks(left, position, self.prefill_lengths):
                plan.append((length, min(length, left)))
                left -= plan[-1][1]
            plan.append((final, last))
            cost = sum(CALL_COST + length for length, _ in plan)
            if best is None or cost < best[0]:
                best = (cost, plan)
        return best[1]

    def call(self, name: str, inputs: dict) -> dict:
        """Run one signature on ``inputs`` (``tokens``, ``input_pos``, a ``prompt_{L}``'s ``last``,
        ``caches``: a state, updated in place, or a batched signature's rows' states in order); return
        ``logits`` (and ``hidden_states``; nothing for a ``prefill_{L}`` without logits). Serialised, so
        threads may share the engine."""
        try:
            with self._lock:
                io = self._io.get(name)
                if io is None:
                    if name not in self.input_details:
                        raise ValueError(f"no signature {name!r}")
                    io = self._io[name] = self._signature_buffers(name)
                for key, buffer in io["inputs"].items():
                    buffer.write(inputs[key])
                caches = inputs["caches"]
                if isinstance(caches, State):  # before: a call that fails may have written some
                    caches.written = max(caches.written, int(np.max(inputs["input_pos"])) + 1)
                if hasattr(self.model, "run_bound"):  # LiteRT's C API (runtime.native)
                    self.model.run_bound(self._bind(name, caches))
                else:  # ai_edge_litert's wrapper (LLM_TFLITE_BINDING=python): by name
                    self.model.run_by_name(name, *self._named(name, caches))
                return {key: buffer.read(int(np.prod(io["shapes"][key])), np.float32).reshape(io["shapes"][key])
                        for key, buffer in io["outputs"].items()}
        except (RuntimeError, ValueError) as e:
            raise RuntimeFailure(f"the runtime failed running {name!r}: {e}; if the file was copied, check "
                                 "the copy, or re-convert it") from e


class Sequence:
    """One token sequence's state (KV caches, position) on a shared engine.

    Feed it tokens in order and get each one's next-token logits; several sequences can
    live at once (threads, interleaved streams) without disturbing each other.

    Example:
        >>> seq = runner.sequence()  # doctest: +SKIP
        >>> logits = seq.feed_last(runner.encode("ROMEO:"))  # doctest: +SKIP
        >>> logits = seq.feed_last([int(logits.argmax())])  # doctest: +SKIP
    """

    def __init__(self, engine: PrefillDecodeEngine, observer: Observer | None = None):
        self.engine = engine
        self.observer = observer
        self.position = 0
        self.caches = engine.new_state()
        self._release = weakref.finalize(self, engine.recycle, self.caches)  # a new sequence reuses these buffers
        #: Tokens fed so far, over the sequence's life (a chat turn's prefill is the difference).
        self.fed = 0

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def written(self) -> int:
        """One past the furthest position any call wrote, padding included (``can_rewind_to``)."""
        return self.caches.written

    def fork(self) -> "Sequence":
        """A copy that continues independently (beams, candidates): its own copy of the caches."""
        self._check_open()
        twin = Sequence.__new__(type(self))
        twin.engine, twin.observer, twin.position, twin.fed = self.engine, self.observer, self.position, 0
        twin.caches = self.engine.copy_state(self.caches)
        twin._release = weakref.finalize(twin, self.engine.recycle, twin.caches)
        return twin

    def close(self) -> None:
        """Give the caches back now, for the next new sequence (else they go back when this object
        is collected, which a batched step may delay past the next request's start: that one would
        allocate and zero a cache of its own). Not fed after; closing twice does nothing."""
        self._release()

    def feed(self, token_ids) -> np.ndarray:
        """Run ``token_ids`` after what was fed before; return their logits ``[n, vocab]`` (scoring:
        ``score_{L}`` signatures). For the last token's alone, ``feed_last`` is cheaper."""
        return self._feed(token_ids, hidden=False)[0]

    def feed_last(self, token_ids) -> np.ndarray:
        """Run ``token_ids`` (at least one) after what was fed before; return the next-token logits
        after the last ``[vocab]``: what generation needs. The prompt's chunks run through prefill
        signatures that compute no logits, the last through ``prompt_{L}``, which computes its last
        token's alone (or ``decode``, a chunk of one token). Files without ``prompt_{L}`` run all but
        the last token through prefill and the last through ``decode``, as LiteRT-LM runs a prompt."""
        token_ids = [int(t) for t in token_ids]
        if not token_ids:
            raise InvalidArgumentError("feed_last needs at least one token")
        if self.engine.prefill_logits:  # an older file's prefill outputs logits anyway
            return self._feed(token_ids, hidden=False)[0][-1]
        self._check_room(len(token_ids))
        if self.engine.prompt_lengths:
            return self._feed(token_ids, hidden=False, score=False, last=True)[0][-1]
        self.prefill(token_ids[:-1])
        return self._feed(token_ids[-1:], hidden=False)[0][-1]

    def prefill(self, token_ids) -> None:
        """Run ``token_ids`` into the caches without computing any logits (``prefill_{L}``
        signatures; a chunk of one token runs ``decode``): a prefix whose next-token logits nobody needs."""
        self._feed(token_ids, hidden=False, score=False)

    def feed_with_hidden(self, token_ids) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[n, vocab]`` and last hidden states ``[n, hidden]`` (files converted with ``--hidden-states``)."""
        if not self.engine.has_hidden_states:
            raise InvalidArgumentError("this file has no hidden_states output, which contrastive search needs; "
                                       "convert the model again with --hidden-states (hidden_states=True)")
        return self._feed(token_ids, hidden=True)

    def generate(self, logits, choose, history: list, limit: int, stops) -> Iterator[tuple[int | None, str | None]]:
        """A generation's loop from ``logits`` (the next-token logits after what was fed): each step
        ``choose(logits, history)`` picks a token, which is yielded as ``(token, end)`` and fed for
        the next step's logits, until a token of ``stops`` (``(None, "stop")``), the ``limit``-th token
        (``"length"``) or the end of the context (``"context"``). ``history`` (the ids so far) grows
        with each token. A token is fed when the next one is asked for: closed after ``(token, None)``,
        the sequence holds everything before ``token``."""
        for count in range(1, limit + 1):
            token = int(choose(logits, history))
            if token in stops:
                yield None, "stop"
                return
            history.append(token)
            if count == limit:
                yield token, "length"
                return
            if self.position >= self.context_length:
                yield token, "context"
                return
            yield token, None
            logits = self.feed_last([token])

    def can_rewind_to(self, position: int) -> bool:
        """Whether moving back to ``position`` (fed tokens after it forgotten) leaves the caches right.

        A full-length cache keeps every position, so any. A ring (a local layer's last ``R`` slots,
        ``llm_tflite.families.ops.Ring``) has written later positions, and padded chunks' filler, over
        slots: going back is right while the furthest slot ever written is at most the ring's slack
        (``R`` minus the window) past ``position``. Then every slot a token from ``position`` on sees
        still holds its position, and every slot written past it stays out of its window. One token
        back (a cached prompt's last token fed again) always is."""
        return not self.engine.has_rings or self.written - 1 - position <= self.engine.ring_slack

    def _run(self, name: str, tokens, input_pos, hidden: bool, last=None) -> dict:
        """Run signature ``name`` on one chunk: ``logits`` (and ``hidden_states``); ``last``: a
        ``prompt_{L}``'s input."""
        inputs = dict(tokens=tokens, input_pos=input_pos, **({} if last is None else {"last": last}))
        if self.observer is not None:  # the caches as the signature takes them (``stored_cache_shape``)
            details = self.engine.input_details[name]
            self.observer(name, {**inputs, **{key: value.reshape(details[key]["shape"])
                                              for key, value in self.engine.read_state(self.caches).items()}})
        return self.engine.call(name, dict(inputs, caches=self.caches))

    def _check_open(self) -> None:
        if not self._release.alive:  # its caches may be another sequence's by now
            raise InvalidArgumentError("this sequence is closed: start a new one (runner.sequence())")

    def _check_room(self, count: int) -> None:
        if self.position + count > self.context_length:
            raise ContextLengthError(f"{self.position + count} tokens do not fit the context of {self.context_length} tokens")

    def _feed(self, token_ids, hidden: bool, score: bool = True, last: bool = False):
        """Run ``token_ids``; with ``score``, return their logits (and hidden states), else nothing
        (``prefill_{L}`` signatures; a chunk of one token still runs ``decode``); with ``last`` (and
        not ``score``), the last chunk runs ``prompt_{L}`` and its last token's logits ``[1, vocab]`` return."""
        token_ids = [int(t) for t in token_ids]
        self._check_open()
        self._check_room(len(token_ids))
        engine = self.engine
        outputs, hiddens = [], []
        i = 0
        if last:
            plan = engine.last_chunks(len(token_ids), self.position)
        else:
            plan = [(n, n) for n in engine.chunks(len(token_ids), self.position,
                                                  engine.score_lengths if score else engine.prefill_lengths)]
        for k, (length, take) in enumerate(plan):
            chunk = token_ids[i : i + take]
            tokens = np.zeros((1, length), np.int32)
            tokens[0, : len(chunk)] = chunk
            input_pos = np.arange(self.position, self.position + length, dtype=np.int32)
            final = last and k == len(plan) - 1  # the prompt's last chunk: its last token's logits
            index = np.array([len(chunk) - 1], np.int32) if final and length > 1 else None
            name = engine.decode_signature(self.position) if length == 1 else \
                engine.score_signature(length) if score else \
                engine.prompt_signature(length, self.position) if final else \
                engine.prefill_signature(length, self.position)
            result = self._run(name, tokens, input_pos, hidden, index)
            if score:
                outputs.append(result["logits"].reshape(length, -1)[: len(chunk)])
            elif final:
                outputs.append(result["logits"].reshape(1, -1))
            if hidden:
                hiddens.append(result["hidden_states"].reshape(length, -1)[: len(chunk)])
            i += len(chunk)
            self.position += len(chunk)
            self.fed += len(chunk)
        if not score and not last:
            return None, None
        if not outputs:  # nothing fed
            return np.zeros((0, engine.vocab_size), np.float32), (np.zeros((0, 0), np.float32) if hidden else None)
        return np.concatenate(outputs, axis=0), (np.concatenate(hiddens, axis=0) if hidden else None)
