"""Running ``generate``-mode files: TF Text's custom ops, and the Flex delegate when the file has Flex ops.

GPT-2 files need Flex (KerasHub's BPE tokenizer is TensorFlow string ops); PaLM-style
files use TF Text's fast SentencePiece kernels only, so they run without Flex.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from llm_tflite.console import quiet_native

from llm_tflite.errors import InvalidArgumentError, ModelFileError, RuntimeFailure, UnsupportedRuntimeError
from llm_tflite.runtime import sampling
from llm_tflite.runtime.engine import Chunk, Engine, ModelFile, Request

WHAT_TO_DO = (
    "Run it where TensorFlow 2.19 and tensorflow-text 2.19 are installed (pip install 'llm-tflite[convert]'; "
    "their Python wheels carry the Flex delegate, TensorFlow >= 2.20 wheels ship none), or convert the model "
    "with --mode prefill_decode, which needs builtin ops only."
)


def _interpreter(data: bytes, num_threads):
    """An interpreter with Flex and TF Text ops, or ``UnsupportedRuntimeError`` saying why not."""
    try:
        from llm_tflite.console import import_tensorflow

        tf = import_tensorflow()
        import tensorflow_text as tf_text
        from tensorflow.lite.python import interpreter as interpreter_lib
    except (ImportError, UnsupportedRuntimeError) as e:
        # What remains is a runtime without Flex (e.g. ai_edge_litert alone): say so plainly.
        raise UnsupportedRuntimeError(
            f"this is a generate-mode file: its tokenizer and loop are TensorFlow ops (Flex delegate) "
            f"and TF Text custom ops, which this Python environment cannot run ({e}). {WHAT_TO_DO}"
        ) from e
    from llm_tflite.litert.flatbuffer import operator_names

    needs_flex = any(op.startswith("CUSTOM:Flex") for op in operator_names(data))
    major_minor = tuple(int(p) for p in tf.__version__.split(".")[:2])
    if needs_flex and major_minor >= (2, 20):
        raise UnsupportedRuntimeError(
            f"TensorFlow {tf.__version__} wheels ship no Flex delegate (LiteRT issue #6458), so this "
            f"generate-mode file cannot run here. {WHAT_TO_DO}"
        )
    return interpreter_lib.InterpreterWithCustomOps(
        model_content=data,
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        num_threads=num_threads,
    )


class GenerateEngine(Engine):
    """Calls ``serving_default(prompt) -> output_0`` and returns the whole output text.

    The graph holds its own tokenizer, loop and sampler (fixed at export), so it takes text,
    not token ids, and a retry gives the same text. Calls are serialised: the native
    interpreter must never run in two threads at once.
    """

    kind = "generate"
    fills_context = True  # the graph runs to its max_length unless told fewer tokens

    @classmethod
    def open(cls, model: ModelFile, *, num_threads: int, weight_cache: str) -> "GenerateEngine":
        return cls(bytes(model.data), model.metadata, num_threads, model.path, model.tokenizer)

    def __init__(self, data: bytes, metadata: dict, num_threads, path, tokenizer):
        self.metadata, self.tokenizer, self.path = metadata, tokenizer, path
        self.token_budget = int(metadata["max_length"])
        self.vocab_size = tokenizer.vocab_size
        with quiet_native():  # TensorFlow's import and the XNNPACK delegate announce themselves
            try:
                interpreter = _interpreter(data, num_threads)
            except (RuntimeError, ValueError) as e:
                raise ModelFileError(f"the runtime cannot load {path!r}: {e}; re-convert it") from e
            try:
                self.signature = interpreter.get_signature_runner("serving_default")
            except (RuntimeError, ValueError) as e:
                raise UnsupportedRuntimeError(f"the runtime cannot prepare {path!r}: {e}. {WHAT_TO_DO}") from e
        self._lock = threading.Lock()
        self._first_call = True

    def generate(self, prompt: str) -> str:
        # A 0-d *bytes* array: the TFLite Python wrapper mis-encodes 0-d str/object arrays.
        try:
            with self._lock:
                # LiteRT announces its XNNPACK delegate at the first invoke: keep that off the console.
                with quiet_native() if self._first_call else contextlib.nullcontext():
                    out = self.signature(prompt=np.array(prompt.encode("utf-8")))["output_0"]
                self._first_call = False
        except (RuntimeError, ValueError) as e:
            raise RuntimeFailure(f"the interpreter failed running the generate graph: {e}; if the file was copied, "
                                 f"check the copy, or re-convert it. {WHAT_TO_DO}") from e
        text = bytes(np.asarray(out).reshape(-1)[0] if np.ndim(out) else out.item()).decode("utf-8", errors="replace")
        return text  # prompt + continuation, as the graph detokenizes them (the runner splits them)

    # -- the engine interface ----------------------------------------------------------
    def check(self, sampler, settings: dict, seed, stop_token_ids: set) -> None:
        """A generate-mode file fixed its sampler at export: say so instead of ignoring arguments."""
        sampling.check_known(settings)
        if isinstance(sampler, str) and sampler in sampling.SEARCHES:
            raise InvalidArgumentError(f"sampler={sampler!r} runs in the runner's loop, which needs a prefill_decode "
                                       "file; this generate-mode file has its loop in the graph")
        sampling.check_names(sampler, settings)
        fixed = self.metadata.get("default_sampler", "greedy")
        if sampler != fixed or settings or (seed is not None and seed != self.metadata.get("seed")):
            raise InvalidArgumentError(
                f"this generate-mode file samples with {fixed!r} and the settings fixed at export "
                f"({self.metadata.get('sampler_settings', {})}, seed {self.metadata.get('seed')}); it cannot use "
                f"sampler={sampler!r}, {settings or ''} {'seed=' + str(seed) if seed is not None else ''}. Convert "
                "again with --sampler/--temperature/--top-k/--top-p/--seed, or use a prefill_decode file"
            )

    def deterministic(self, sampler) -> bool:
        return True  # the graph's sampler and seed are fixed: the same prompt gives the same text

    def unsupported(self, what: str) -> Exception:
        return ModelFileError(f"{what} needs a prefill_decode file; {self.path!r} is a generate file")

    def tokens(self, request: Request, ids: list[int], limit: int, prompt: str | None, seed):
        """The graph's continuation as tokens; the prompt (as the graph sees it) is never returned."""
        output = self.generate(prompt)
        echoed = self.tokenizer.decode(ids)  # the prompt as the in-graph tokenizer round-trips it
        if output.startswith(echoed):
            continuation = output[len(echoed):]
        elif output.startswith(prompt):
            continuation = output[len(prompt):]
        else:
            raise RuntimeFailure(
                "the generate-mode graph's output does not start with the prompt as its tokenizer reads it, so the "
                "continuation cannot be told apart from the prompt; use a prefill_decode file for this text"
            )
        tokens = self.tokenizer.encode(continuation)  # as our tokenizer reads the text: for counting and cutting
        ended = len(ids) + len(tokens) < self.token_budget  # the graph stopped at its end token
        stops = request.stop_token_ids
        cut = next((i for i, t in enumerate(tokens) if t in stops), None)
        if cut is not None and cut < limit:
            yield Chunk(self.tokenizer.decode(tokens[:cut]), tokens[:cut]), "stop"
        elif len(tokens) > limit and request.max_new_tokens is not None:  # re-read text can hold more tokens
            yield Chunk(self.tokenizer.decode(tokens[:limit]), tokens[:limit]), "length"
        else:  # the graph's own text, untouched
            yield Chunk(continuation, tokens), "stop" if ended else "length"
