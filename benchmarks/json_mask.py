"""JSON-constrained decoding: what the token mask costs per decode step, against the step itself.

    python benchmarks/json_mask.py FILE [--tokens 96] [--runs 5] [--outlines]

On one prefill_decode file (GPT-2 124M's 50,257-token vocabulary is the case the issue names):
- the model's decode step (``Sequence.feed`` of one token), median over the tokens;
- the mask step of ``llm_tflite.runtime.constraints.JSONConstraint`` (llguidance: compute the
  mask, unpack it, apply it to the logits, advance the matcher), median over the same tokens;
- end to end: tokens/s of greedy generation with and without the schema;
- with ``--outlines``: outlines-core's index (built over the whole vocabulary before the first
  token) and its per-step allowed-token lookup, on the same schema (``pip install outlines-core``).
Prints JSON; docs/performance.md "JSON-constrained output" records a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

#: Long enough to run for ``--tokens`` steps: free text inside a string field.
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40}, "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    "summary": {"type": "string", "minLength": 400}}, "required": ["title", "year", "tags", "summary"],
    "additionalProperties": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--outlines", action="store_true")
    args = parser.parse_args()

    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    from llm_tflite import InterpreterRunner
    from llm_tflite.runtime.constraints import JSONConstraint

    runner = InterpreterRunner(args.file)
    prompt = runner.encode("A film as JSON:")
    stops = {runner.eos_id} - {None}
    started = time.perf_counter()
    constraint = JSONConstraint(runner, SCHEMA, stops)
    setup_s = time.perf_counter() - started  # the tokenizer's view (first use per runner) and the grammar
    result = runner.complete("A film as JSON:", args.tokens, "random", seed=0, json_schema=SCHEMA)
    tokens = result.token_ids
    # the model's step, one token at a time after the prompt
    steps, masks = [], []
    for _ in range(args.runs):
        sequence = runner.sequence()
        sequence.feed_last(prompt)
        for token in tokens:
            t = time.perf_counter()
            logits = sequence.feed([token])[-1]
            steps.append(time.perf_counter() - t)
        matcher = constraint.matcher()
        bitmask = allocate_token_bitmask(1, runner.vocab_size)
        for token in tokens:
            t = time.perf_counter()
            fill_next_token_bitmask(matcher, bitmask)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[: runner.vocab_size].astype(bool)
            np.where(allowed, logits, -np.inf)
            matcher.consume_token(token)
            masks.append(time.perf_counter() - t)
    step, mask = statistics.median(steps), statistics.median(masks)
    # end to end, greedy, the same number of tokens either way
    plain, constrained = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        n = len(runner.complete("A film as JSON:", args.tokens, "greedy", stop_token_ids=[]).token_ids)
        plain.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = len(runner.complete("A film as JSON:", args.tokens, "greedy", json_schema=SCHEMA).token_ids)
        constrained.append(n / (time.perf_counter() - t))
    report = {
        "file": args.file, "vocab_size": runner.vocab_size, "tokens": len(tokens), "runs": args.runs,
        "decode_step_ms": step * 1e3, "mask_step_ms": mask * 1e3, "mask_over_step": mask / step,
        "mask_p90_ms": float(np.percentile(masks, 90)) * 1e3, "llguidance_setup_s": setup_s,
        "greedy_tokens_per_s": statistics.median(plain), "json_greedy_tokens_per_s": statistics.median(constrained),
    }
    if args.outlines:
        report["outlines_core"] = outlines_figures(runner, tokens)
    print(json.dumps(report, indent=2))


def outlines_figures(runner, tokens) -> dict:
    """outlines-core on the same schema and tokens: index build time and per-step allowed-token lookup."""
    from outlines_core import Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    eos = runner.eos_id
    vocabulary: dict[str, list[int]] = {}
    for i in range(runner.vocab_size):
        if i == eos:
            continue
        piece = runner.tokenizer.decode_bytes([i])
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            continue  # outlines-core takes text tokens; partial UTF-8 bytes are left out
        if text:
            vocabulary.setdefault(text, []).append(i)
    started = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), Vocabulary(eos, vocabulary))
    build_s = time.perf_counter() - started
    state, times = index.get_initial_state(), []
    for token in tokens:
        t = time.perf_counter()
        allowed = index.get_allowed_tokens(state)
        mask = np.zeros(runner.vocab_size, bool)
        mask[allowed] = True
        times.append(time.perf_counter() - t)
        if token not in allowed:
            break  # a token llguidance allowed that outlines-core's text vocabulary lacks
        state = index.get_next_state(state, token)
    return {"index_build_s": build_s, "mask_step_ms": statistics.median(times) * 1e3, "steps": len(times)}


if __name__ == "__main__":
    main()
