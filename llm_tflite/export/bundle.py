"""Writing ``.litertlm`` bundles (``llm-tflite bundle``, ``convert --format litertlm``).

``build_bundle`` packs one of our ``prefill_decode`` files with its tokenizer (the family's
``litertlm_tokenizer`` hook) and an ``LlmMetadata`` (``llm_metadata_textproto``) through
LiteRT-LM's official builder (``litert-lm-builder``): in this process when it imports here,
otherwise in the small environment that ``scripts/setup.sh`` creates for it (its
protobuf >= 6.31 cannot share an environment with TensorFlow 2.19's protobuf < 6), where
``bundle_worker.py`` runs as a script. Reading bundles is ``llm_tflite.litert.litertlm``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from llm_tflite.console import stop_if_interrupted
from llm_tflite.errors import (InvalidArgumentError, ModelFileError, RuntimeFailure, UnknownFamilyError,
                               UnsupportedRuntimeError)
from llm_tflite.export import bundle_worker
from llm_tflite.litert.flatbuffer import check_writable, read_model_file
from llm_tflite.litert.litertlm import bundle_stop_ids, is_litertlm, tflite_section, tokenizer_reference
from llm_tflite.litert.metadata import add_metadata, read_verified_metadata

LITERTLM_EXTRA = "pip install 'llm-tflite[litertlm]'"
#: Where ``scripts/setup.sh`` puts the builder's own environment, inside the main one.
HELPER_ENV = "litertlm"
HELPER_VARIABLE = "LLM_TFLITE_LITERTLM_PYTHON"


def llm_metadata_textproto(record: dict, *, max_num_tokens: int | None = None, model_type: str = "generic_model") -> str:
    """LiteRT-LM's ``LlmMetadata`` for one of our files: start/stop tokens, context, greedy by default
    (what ``InterpreterRunner.generate`` does without a sampler)."""
    lines = []
    chat = record.get("chat")
    if record.get("add_bos") and record.get("bos_id") is not None:
        lines.append(f"start_token {{ token_ids {{ ids: {int(record['bos_id'])} }} }}")
    lines += [f"stop_tokens {{ token_ids {{ ids: {i} }} }}" for i in bundle_stop_ids(record)]
    lines.append(f"max_num_tokens: {int(max_num_tokens or record['context_length'])}")
    if chat is not None:  # LiteRT-LM renders it (minja) for its Conversation API, as our runner does
        lines.append(f"jinja_prompt_template: {textproto_string(TEXT_CONTENT_PREAMBLE + chat['template'])}")
    # k = 1 is greedy; the CPU engine implements only the TOP_P type (runtime/components/sampler_factory.cc)
    lines.append("sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 }")
    # the engine's model type picks how its Conversation API hands messages to the template
    # (the family's ``litertlm_model_type``: Qwen's template reads content as a string)
    lines.append(f"llm_model_type {{ {model_type if chat is not None else 'generic_model'} {{}} }}")
    return "\n".join(lines) + "\n"


#: Put before a template in a bundle: LiteRT-LM's Conversation API hands a message's content to the
#: template as a list of parts (``[{"type": "text", "text": ...}]``), while most published templates
#: (Qwen 3's, Llama 3's) read a string, as our runner gives them (``check_messages``). Rendered by
#: Jinja2 and by LiteRT-LM's minijinja alike, it changes nothing for string content.
TEXT_CONTENT_PREAMBLE = (
    "{%- set _text = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- set _text.messages = _text.messages + [{'role': m.role, 'content': (m.content if m.content is string "
    "else (m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')))}] -%}"
    "{%- endfor -%}"
    "{%- set messages = _text.messages -%}"
)


def textproto_string(text: str) -> str:
    """``text`` as a protobuf text-format string literal (UTF-8, octal escapes for all but printable ASCII)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append("\\" + char if char in "\"\\" else char if 32 <= byte < 127 else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def find_builder() -> list[str] | None:
    """None: the builder imports in this process. Else the helper Python to run the worker with."""
    try:
        from litert_lm_builder import litertlm_builder  # noqa: F401

        return None
    except Exception:  # ImportError, or protobuf's VersionError next to TensorFlow 2.19
        pass
    configured = os.environ.get(HELPER_VARIABLE)
    if configured:
        if not os.access(configured, os.X_OK):
            raise UnsupportedRuntimeError(f"{HELPER_VARIABLE}={configured!r} is not an executable Python; point it "
                                          "at the python of an environment with litert-lm-builder")
        return [configured]
    helper = os.path.join(sys.prefix, HELPER_ENV, "bin", "python")
    if os.access(helper, os.X_OK):
        return [helper]
    raise UnsupportedRuntimeError(
        "writing .litertlm bundles needs LiteRT-LM's builder (litert-lm-builder), which needs protobuf >= 6.31 "
        "and so cannot be installed next to TensorFlow 2.19. Either run `llm-tflite bundle` in an environment "
        f"without TensorFlow ({LITERTLM_EXTRA}), or create the builder's own environment: "
        f"`python -m venv {os.path.join(sys.prefix, HELPER_ENV)} && "
        f"{helper} -m pip install litert-lm-builder` (scripts/setup.sh does this), or set {HELPER_VARIABLE}"
    )


def _run_builder(spec: dict) -> None:
    command = find_builder()
    if command is None:
        try:
            bundle_worker.build(spec)
        except Exception as e:
            raise RuntimeFailure(f"LiteRT-LM's builder failed: {type(e).__name__}: {e}") from e
        return
    spec_path = os.path.join(os.path.dirname(spec["output"]), "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    done = subprocess.run([*command, bundle_worker.__file__, spec_path], capture_output=True, text=True)
    if done.returncode == 3:
        raise UnsupportedRuntimeError(f"{command[0]} has no litert-lm-builder: {command[0]} -m pip install "
                                      "litert-lm-builder")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeFailure(f"LiteRT-LM's builder failed ({command[0]}):\n{tail}")


def family_of(record: dict):
    """The family that made the file (its tokenizer hook), or the base defaults if it is not installed."""
    from llm_tflite.families.base import ModelFamily
    from llm_tflite.plugins.registry import get_family

    try:
        return get_family(record["family"])
    except UnknownFamilyError:
        return ModelFamily()


def build_bundle(model_path, output, *, max_num_tokens: int | None = None) -> str:
    """Bundle a ``prefill_decode`` file with its tokenizer and ``LlmMetadata`` into ``output`` (``.litertlm``).

    Args:
        model_path: a ``.tflite`` file from ``llm-tflite convert`` (``--mode prefill_decode``).
        output: the bundle to write; written through a temporary file, so a failure leaves none.
        max_num_tokens: the engine's token budget (default: the file's context length).

    Example:
        >>> build_bundle("model.tflite", "model.litertlm")  # doctest: +SKIP
        'model.litertlm'
    """
    model_path, output = os.fspath(model_path), os.fspath(output)
    check_writable(output)
    data = read_model_file(model_path)
    if is_litertlm(data):
        raise ModelFileError(f"{model_path!r} is already a .litertlm bundle")
    record = read_verified_metadata(data, repr(model_path))
    if record["export_mode"] != "prefill_decode":
        raise ModelFileError(f"{model_path!r} is a generate-mode file; LiteRT-LM runs prefill_decode files: "
                             "convert with --mode prefill_decode")
    if record.get("kv_cache_layout") is None:  # [1, C, heads, head_dim]: LiteRT-LM reads a cache's length from axis 2
        raise ModelFileError(f"{model_path!r} was converted before llm-tflite wrote LiteRT-LM's KV-cache "
                             "layout (its record has no kv_cache_layout); convert the model again")
    if set(record["kv_cache"].get("lengths", [record["context_length"]])) != {record["context_length"]} and \
            not record["kv_cache"].get("rings_as_context"):
        # LiteRT-LM 0.18.1 takes the shortest cache as its token limit ("Passed in max_num_tokens (256) is
        # larger than what the static model supports (56)"), even with a global layer's cache named and
        # listed first: it would stop at a local layer's window and generate wrong tokens before that.
        # Rings stored context-shaped (litert.metadata.stored_cache_shape) run to the context.
        raise ModelFileError(f"in {model_path!r} the local layers' caches keep only their window (ring caches) in "
                             "buffers of their own size, which LiteRT-LM 0.18 cannot run: it takes the shortest "
                             "cache as its token limit; convert the model again with --format litertlm (rings "
                             "stored as LiteRT-LM reads them) or --no-ring-caches")
    if record["kv_cache"].get("dtype", "float32") != "float32":
        raise ModelFileError(f"{model_path!r} keeps int8 caches with their scales beside them, which LiteRT-LM "
                             "cannot run: it takes every kv_cache_* input for a float cache of its own layout; "
                             "convert the model again without --kv-cache int8 for LiteRT-LM")
    if max_num_tokens is not None and not 1 <= max_num_tokens <= record["context_length"]:
        raise InvalidArgumentError(f"max_num_tokens must be 1..{record['context_length']} (the file's context), "
                                   f"got {max_num_tokens}")
    family = family_of(record)
    kind, tokenizer = family.litertlm_tokenizer(record["tokenizer"])
    # (a record of format 3 or later: older versions of llm-tflite then say "upgrade" rather than fail on it)
    reference = tokenizer_reference(record["tokenizer"], kind, tokenizer) if record["format"] >= 3 else None
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".litertlm-") as work:
        if reference is not None:  # the record points at the tokenizer section: one copy in the bundle, not two
            model_path = os.path.join(work, "model.tflite")
            with open(model_path, "wb") as f:
                f.write(add_metadata(data, {**record, "tokenizer": reference}, as_bytes=False))
        del data
        tokenizer_path = os.path.join(work, "tokenizer.json" if kind == "hf" else "tokenizer.model")
        with open(tokenizer_path, "wb") as f:
            f.write(tokenizer)
        metadata_path = os.path.join(work, "llm_metadata.textproto")
        with open(metadata_path, "w", encoding="utf-8") as f:
            f.write(llm_metadata_textproto(record, max_num_tokens=max_num_tokens,
                                           model_type=getattr(family, "litertlm_model_type", "generic_model")))
        partial = os.path.join(work, "model.litertlm")
        _run_builder({"model": os.path.abspath(model_path), "tokenizer": tokenizer_path, "tokenizer_kind": kind,
                      "llm_metadata": metadata_path, "output": partial})
        tflite_section(read_model_file(partial), "the bundle just written")  # it reads back
        stop_if_interrupted()
        os.replace(partial, output)
    return output
