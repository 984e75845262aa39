"""Today's families at their published sizes: ``python benchmarks/litertlm_families.py [PRESET ...]``.

For each preset (default: gemma3_270m, qwen3_0.6b_en, llama3.2_1b; random weights, so it runs
offline), with a 64-token prompt:

1. float32: ``llm-tflite convert --random-weights`` (a file past 1.5 GiB of weights keeps them
   after the flatbuffer: Qwen 3 0.6B, Llama 3.2 1B) and KerasHub's model of the same random weights
   (``load_model(preset, random_weights=True)``, seeded): the file's logits over the prompt
   (prefill signatures) and 32 cached steps (decode signatures) against KerasHub's, max abs error
   over their standard deviation (``llm_tflite.testing.run_cached_parity_test``);
2. ``int4_blockwise``: the file converts and generates 8 tokens;
3. ``dynamic_int8`` as a ``.litertlm`` bundle: 32 greedy tokens from our runner and from LiteRT-LM's
   engine (``litert_lm.Engine``, CPU, 2 threads) on that same file: whether the engine's tokenizer
   gives our prompt ids, and how many of its 32 decode steps are ours (compared as the engine
   reports them: one text per step).

The tests do the same on tiny configurations of each family (tests/test_decoder_families.py);
this is the published sizes, too slow for CI (a 1B conversion takes minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

PROMPT_TOKENS, NEW_TOKENS = 64, 32
TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief that thou, her "
        "maid, art far more fair than she. Be not her maid, since she is envious; her vestal livery is but "
        "sick and green, and none but fools do wear it; cast it off. It is my lady, O, it is my love!")


def convert(preset: str, quantize: str, output: str) -> float:
    """Convert in a child process (this one stays small); returns the wall time."""
    started = time.monotonic()
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "llm-tflite"), "-q", "convert", preset,
                    "--random-weights", "--quantize", quantize, "-o", output], check=True)
    return time.monotonic() - started


def float_parity(preset: str, directory: str, ids: list[int]) -> float:
    """The float32 file's largest logit error against KerasHub's, over their standard deviation."""
    import gc

    import numpy as np

    from llm_tflite import load_model
    from llm_tflite.testing import run_cached_parity_test

    path = os.path.join(directory, f"{preset}.float32.tflite")
    convert(preset, "none", path)  # first: the child's peak and this process's model are not held together
    _, lm = load_model(preset, random_weights=True)  # the weights the child converted: seed 0
    steps = [int(t) for t in np.random.default_rng(7).integers(10, 1000, NEW_TOKENS)]
    try:
        return run_cached_parity_test(lm, path, ids, steps)
    finally:
        del lm
        gc.collect()
        os.remove(path)


def int4_generates(preset: str, directory: str, ids: list[int]) -> str:
    """``"8 of 8 tokens"`` from the ``int4_blockwise`` file."""
    from llm_tflite import InterpreterRunner

    path = os.path.join(directory, f"{preset}.int4.tflite")
    convert(preset, "int4_blockwise", path)
    try:
        return f"{len(list(InterpreterRunner(path, num_threads=2).generate_ids(ids, 8, stop_token_ids=[])))} of 8 tokens"
    finally:
        os.remove(path)


def run(preset: str, directory: str) -> dict:
    import litert_lm

    from llm_tflite import InterpreterRunner
    from llm_tflite.testing import engine_steps_agreeing

    bundle = os.path.join(directory, f"{preset}.litertlm")
    convert(preset, "dynamic_int8", bundle)
    runner = InterpreterRunner(bundle, num_threads=2)
    ids = runner.encode(TEXT)[:PROMPT_TOKENS]
    prompt = runner.tokenizer.decode([i for i in ids if i != runner.bos_id])
    assert runner.encode(prompt) == ids, "the cut prompt must encode back to the same ids"
    ours = list(runner.generate_ids(ids, NEW_TOKENS, stop_token_ids=[]))
    engine = litert_lm.Engine(bundle, backend=litert_lm.Backend.CPU(thread_count=2))
    try:
        start = [runner.bos_id] if runner.add_bos else []
        same_prompt = start + engine.tokenize(prompt) == ids
        with engine.create_session(apply_prompt_template=False, max_output_tokens=NEW_TOKENS,
                                   sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill([prompt])
            steps = [r.texts[0] for r in session.run_decode_async()]
    finally:
        engine.close()
    agree = engine_steps_agreeing(steps, runner, ours)
    size = os.path.getsize(bundle)
    del runner
    os.remove(bundle)
    return {"preset": preset, "file_mb": size / 1e6, "same_prompt_ids": same_prompt,
            "greedy_agree": f"{agree}/{len(ours)}",
            "float": float_parity(preset, directory, ids), "int4_tokens": int4_generates(preset, directory, ids)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["gemma3_270m", "qwen3_0.6b_en", "llama3.2_1b"])
    parser.add_argument("--dir", help="where the files go while they are used (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        print("| preset | float32 file vs KerasHub, 64 + 32 cached (max abs / std) | int4 generates | dynamic_int8 "
              ".litertlm MB | engine tokenizes our prompt | engine's greedy steps equal ours |")
        print("| --- | ---: | --- | ---: | --- | --- |")
        for preset in args.presets:
            r = run(preset, directory)
            print(f"| `{r['preset']}` | {r['float']:.1e} | "
                  f"{r['int4_tokens']} | "
                  f"{r['file_mb']:,.0f} | {'yes' if r['same_prompt_ids'] else 'no'} | {r['greedy_agree']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
