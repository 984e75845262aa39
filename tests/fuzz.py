"""Fuzzing model files: corrupted copies of a good file, each opened in a subprocess.

Used by ``tests/test_robustness.py`` (a fixed-seed subset in CI) and
``scripts/fuzz_model_files.py`` (the full run whose figures are in docs/runner.md).

Every case ends in one of: ``same`` (ran, same text as the good file: the damage was
harmless), ``typed`` (an ``llm_tflite.errors`` exception), or a defect: ``untyped``
(another exception), ``wrong`` (ran, different text), ``crash`` (the process died),
``hang`` (no answer in time), ``oom`` (killed by the memory limit).
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import textwrap

DEFECTS = ("untyped", "wrong", "crash", "hang", "oom")

WORKER = textwrap.dedent("""
    import json, sys
    from llm_tflite import InterpreterRunner
    from llm_tflite.errors import LLMTFLiteError
    for line in sys.stdin:
        case = json.loads(line)
        print(json.dumps({"start": case["id"]}), flush=True)
        try:
            runner = InterpreterRunner(case["path"])
            text = runner.generate(case["prompt"], max_new_tokens=8)
            result = {"outcome": "ran", "text": text}
        except LLMTFLiteError as e:
            result = {"outcome": "typed", "error": type(e).__name__, "message": str(e)[:300]}
        except MemoryError as e:
            result = {"outcome": "oom", "error": "MemoryError", "message": str(e)[:300]}
        except Exception as e:
            result = {"outcome": "untyped", "error": type(e).__name__, "message": str(e)[:300]}
        print(json.dumps({"id": case["id"], **result}), flush=True)
""")


# -- mutations ----------------------------------------------------------------------
def _shape_offsets(data: bytes) -> list[int]:
    """File offsets of the int32 dimensions of every tensor shape (where a flipped size hurts most)."""
    import flatbuffers

    from llm_tflite.litert.flatbuffer import tflite_schema

    model = tflite_schema().Model.GetRootAs(data, 0)
    offsets = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tab = subgraph.Tensors(t)._tab
            field = flatbuffers.number_types.UOffsetTFlags.py_type(tab.Offset(4))  # Tensor.shape
            if field:
                start, length = tab.Vector(field), tab.VectorLen(field)
                offsets += [start + 4 * j for j in range(length)]
    return offsets


def _metadata_span(data: bytes) -> tuple[int, int]:
    start = data.rfind(b'{"format"')
    end = data.find(b"}", data.rfind(b'"sha256"')) + 1
    return start, end


def resigned(data: bytes, change) -> bytes:
    """``data`` with its record changed by ``change(record)`` and a valid checksum: what a buggy
    converter, not a damaged copy, would write."""
    from llm_tflite.litert.metadata import add_metadata, read_metadata_from_bytes

    record = read_metadata_from_bytes(data)
    change(record)
    return add_metadata(data, record)


def _record_changes(record_mode: str):
    def drop(key):
        return lambda r: r.pop(key, None)

    def put(key, value):
        return lambda r: r.__setitem__(key, value)

    changes = [drop("tokenizer"), drop("context_length"), drop("export_mode"), put("format", 99),
               put("export_mode", "beam"), put("context_length", 1 << 30), put("context_length", "long"),
               put("eos_id", 10**6), put("bos_id", -3), put("tokenizer", {"type": "wordpiece"}),
               put("tokenizer", {"type": "gpt2_bpe", "vocab": {"a": "b"}, "merges": []}), put("add_bos", "yes")]
    if record_mode == "prefill_decode":
        changes += [lambda r: r.__setitem__("context_length", r["context_length"] * 2),
                    lambda r: r.__setitem__("context_length", r["context_length"] // 2),
                    put("prefill_lengths", [3, 5]), drop("kv_cache"),
                    lambda r: r["kv_cache"].__setitem__("num_layers", r["kv_cache"]["num_layers"] + 1),
                    lambda r: r["kv_cache"].__setitem__("head_dim", r["kv_cache"]["head_dim"] * 2)]
    else:
        changes += [drop("max_length"), put("max_length", 0)]
    return changes


def mutations(data: bytes, count: int, seed: int, mode: str):
    """``count`` (kind, damaged bytes) pairs: truncations, bit flips in the header, tables and
    buffers, overwritten tensor shapes, damaged metadata bytes, and re-signed bad records."""
    rng = random.Random(seed)
    shapes = _shape_offsets(data)
    meta_start, meta_end = _metadata_span(data)
    record_changes = _record_changes(mode)
    kinds = ["truncate", "flip_header", "flip_tables", "flip_buffers", "shape", "metadata_bytes", "record"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        damaged = bytearray(data)
        if kind == "truncate":
            damaged = damaged[: rng.choice([0, 4, 8, 16, 64, rng.randrange(len(data))])]
        elif kind in ("flip_header", "flip_tables", "flip_buffers"):
            low, high = {"flip_header": (0, 64), "flip_tables": (64, max(65, meta_start // 8)),
                         "flip_buffers": (0, len(data))}[kind]
            for _ in range(rng.choice([1, 1, 2, 8])):
                damaged[rng.randrange(low, high)] ^= 1 << rng.randrange(8)
        elif kind == "shape":
            offset = rng.choice(shapes)
            damaged[offset : offset + 4] = rng.choice([771_915_622, -5, 0, 1 << 30, rng.randrange(1 << 31)]).to_bytes(
                4, "little", signed=True)
        elif kind == "metadata_bytes":
            offset = rng.randrange(meta_start, meta_end)
            damaged[offset] = rng.randrange(256)
        else:
            damaged = bytearray(resigned(data, record_changes[(i // len(kinds)) % len(record_changes)]))
        yield kind, bytes(damaged)


# -- running ------------------------------------------------------------------------
def _limit_memory(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def run_cases(paths: list[str], prompt: str, reference: str, *, timeout: float = 120,
              memory_limit: int = 8 << 30) -> list[dict]:
    """Open each file in a worker subprocess (restarted after a crash or hang); one result per file."""
    results: list[dict] = []
    pending = list(enumerate(paths))
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"}
    while pending:
        worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env, preexec_fn=_limit_memory(memory_limit))
        try:
            for case_id, path in pending:
                worker.stdin.write(json.dumps({"id": case_id, "path": path, "prompt": prompt}) + "\n")
            worker.stdin.close()
        except BrokenPipeError:
            pass
        done = _collect(worker, pending, reference, timeout, results)
        pending = pending[done:]
    return sorted(results, key=lambda r: r["id"])


def _collect(worker, pending, reference, timeout, results) -> int:
    """Read the worker's answers; returns how many pending cases were settled."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(worker.stdout, selectors.EVENT_READ)
    settled = 0
    current = None
    while settled < len(pending):
        if not selector.select(timeout):
            worker.kill()
            worker.wait()
            results.append({"id": pending[settled][0], "outcome": "hang"})
            return settled + 1
        line = worker.stdout.readline()
        if not line:  # the worker died on the current case
            code = worker.wait()
            outcome = "oom" if code in (-9,) else "crash"
            results.append({"id": pending[settled][0], "outcome": outcome, "exit": code})
            return settled + 1
        message = json.loads(line)
        if "start" in message:
            current = message["start"]
            continue
        assert message["id"] == current == pending[settled][0]
        if message["outcome"] == "ran":
            message["outcome"] = "same" if message.pop("text") == reference else "wrong"
        results.append(message)
        settled += 1
    worker.wait()
    return settled


def summarize(results: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts
