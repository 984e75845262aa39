"""llm-tflite and litert-torch on the same Hugging Face checkpoint: ``python benchmarks/litert_torch.py``.

For Gemma 3 270M and Qwen 3 0.6B at their published shapes, one random-weight checkpoint each is
written in Hugging Face's layout (``llm_tflite.testing.write_hf_checkpoint``), then converted to
``.litertlm`` at dynamic int8 with a 1,024-token context

- by litert-torch 0.10 (in its own virtual environment, ``--litert-torch-python``; it needs
  PyTorch): ``python -m litert_torch.generative.export_hf --model=DIR --output_dir=OUT
  --cache_length=1024 --quantization_recipe=dynamic_wi8_afp32``;
- by us: ``llm-tflite convert DIR --quantize dynamic_int8 --context-length 1024 -o X.litertlm``;

each under ``benchmarks/memprobe.py`` (peak RssAnon, sampled every 0.5 s). Both files then run in
LiteRT-LM's engine (``litert_lm.Benchmark``, CPU, 2 threads, prefill 64 / 128 / 512 tokens and
100 decode tokens, median of ``--rounds``, the two files interleaved) and 32 greedy tokens of
the same prompt are compared. Prints a Markdown table. Not a CI test: run it alone on the machine.

Setting up litert-torch (see issue 24): ``python3 -m venv build/litert-torch-venv``, then
``build/litert-torch-venv/bin/pip install torch==2.14.1 litert-torch==0.10.0 "transformers==5.24.*"``
(with 5.25 its Gemma 3 patch fails to import: "Function `apply_rotary_pos_emb` is not decorated
with @use_kernel_forward_from_hub").
Its ``export_hf`` imports ``tensorflow.lite.python.schema_py_generated`` without depending on
TensorFlow; this script puts a module re-exporting ``ai_edge_litert.schema_py_generated`` under
that name on its ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_CONFIGS = {
    "gemma3_270m": ("gemma3", {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144,
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6,
        "sliding_window": 512, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768,
        "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "torch_dtype": "float32"}),
    "qwen3_0.6b": ("qwen3", {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "use_sliding_window": False, "sliding_window": None, "max_position_embeddings": 40960, "hidden_act": "silu",
        "bos_token_id": None, "eos_token_id": 151645, "torch_dtype": "float32"}),
}
SHIM = "from ai_edge_litert.schema_py_generated import *  # noqa: F401,F403\n"
PROMPT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
          "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.")


def probe(tsv: str, command: list[str], env=None) -> tuple[float, float]:
    """``(peak RssAnon GiB, seconds)`` of ``command`` under benchmarks/memprobe.py."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "memprobe.py"), tsv, "--", *command],
                         capture_output=True, text=True, env=env)
    if "exit 0," not in out.stdout:
        raise SystemExit(f"{command[:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    peak = float(out.stdout.rsplit("peak RssAnon ", 1)[1].split()[0])
    return peak, time.monotonic() - started


def convert_litert_torch(python: str, checkpoint: str, out_dir: str, work: str) -> tuple[str, float, float]:
    shim = os.path.join(work, "shim", "tensorflow", "lite", "python")
    os.makedirs(shim, exist_ok=True)
    for d in (os.path.join(work, "shim", "tensorflow"), os.path.join(work, "shim", "tensorflow", "lite"), shim):
        open(os.path.join(d, "__init__.py"), "a").close()
    with open(os.path.join(shim, "schema_py_generated.py"), "w") as f:
        f.write(SHIM)
    env = {**os.environ, "PYTHONPATH": os.path.join(work, "shim")}
    peak, seconds = probe(os.path.join(work, "litert_torch.tsv"),
                          [python, "-m", "litert_torch.generative.export_hf", f"--model={checkpoint}",
                           f"--output_dir={out_dir}", "--cache_length=1024",
                           "--quantization_recipe=dynamic_wi8_afp32"], env)
    files = [os.path.join(out_dir, f) for f in os.listdir(out_dir) if f.endswith(".litertlm")]
    if len(files) != 1:
        raise SystemExit(f"litert-torch wrote {os.listdir(out_dir)}, not one .litertlm")
    return files[0], peak, seconds


def convert_ours(checkpoint: str, output: str, work: str) -> tuple[str, float, float]:
    cli = os.path.join(os.path.dirname(sys.executable), "llm-tflite")
    peak, seconds = probe(os.path.join(work, "ours.tsv"), [cli, "convert", checkpoint, "--quantize", "dynamic_int8",
                                                           "--context-length", "1024", "-o", output])
    return output, peak, seconds


def engine_speed(path: str, prefill: int) -> tuple[float, float]:
    import litert_lm

    info = litert_lm.Benchmark(model_path=path, backend=litert_lm.Backend.CPU(thread_count=2), prefill_tokens=prefill,
                               decode_tokens=100, max_num_tokens=1024).run()
    return info.last_prefill_tokens_per_second, info.last_decode_tokens_per_second


def greedy_texts(path: str) -> list[str]:
    import litert_lm

    engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(thread_count=2))
    try:
        with engine.create_session(apply_prompt_template=False, max_output_tokens=32,
                                   sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill([PROMPT])
            return [r.texts[0] for r in session.run_decode_async()]
    finally:
        engine.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(HF_CONFIGS))
    parser.add_argument("--litert-torch-python", default=os.path.join(ROOT, "build", "litert-torch-venv", "bin", "python"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "litert_torch_bench"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from llm_tflite import InterpreterRunner
    from llm_tflite.testing import write_hf_checkpoint

    rows = []
    for name in args.models:
        family, config = HF_CONFIGS[name]
        work = os.path.join(args.work, name)
        checkpoint = os.path.join(work, "checkpoint")
        if not os.path.exists(os.path.join(checkpoint, "model.safetensors")):
            write_hf_checkpoint(checkpoint, family, config)
        theirs, their_peak, their_s = convert_litert_torch(args.litert_torch_python, checkpoint,
                                                           os.path.join(work, "litert_torch"), work)
        ours, our_peak, our_s = convert_ours(checkpoint, os.path.join(work, "ours.litertlm"), work)
        speeds = {path: {p: [] for p in (64, 128, 512)} for path in (theirs, ours)}
        for _ in range(args.rounds):
            for prefill in (64, 128, 512):
                for path in (theirs, ours):  # interleaved
                    speeds[path][prefill].append(engine_speed(path, prefill))
        runner = InterpreterRunner(ours, num_threads=2)
        ids = runner.encode(PROMPT)
        started = time.perf_counter()
        tokens = runner.generate_ids(ids, 33, stop_token_ids=[])
        next(tokens)
        first = time.perf_counter()
        decoded = sum(1 for _ in tokens)
        runner_decode = decoded / (time.perf_counter() - first)
        runner_prefill = len(ids) / (first - started)
        same = greedy_texts(theirs) == greedy_texts(ours)
        for who, path, peak, seconds in (("litert-torch", theirs, their_peak, their_s),
                                         ("llm-tflite", ours, our_peak, our_s)):
            median = {p: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
                      for p, v in speeds[path].items()}
            rows.append(f"| {name} | {who} | {seconds:.0f} s | {peak:.2f} GiB | {os.path.getsize(path) / 2**20:,.0f} MiB | "
                        + " / ".join(f"{median[p][0]:,.0f}" for p in (64, 128, 512)) + " | "
                        + " / ".join(f"{median[p][1]:.1f}" for p in (64, 128, 512)) + " | "
                        + (f"{runner_prefill:,.0f} / {runner_decode:.1f}" if who == "llm-tflite" else "") + " | "
                        + ("same" if same else "differ") + " |")
        print("\n".join(rows[-2:]), flush=True)
    print("\n| model | converter | convert time | peak RssAnon | .litertlm | LiteRT-LM prefill 64 / 128 / 512 tok/s "
          "| LiteRT-LM decode tok/s after 64 / 128 / 512 | our runner prefill / decode tok/s | greedy texts (32) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
