"""llama.cpp as a peer: its tools built from source, and our architectures written as GGUF.

    .venv/bin/python benchmarks/llama_cpp.py tools            # build llama-server, llama-bench, llama-quantize
    .venv/bin/python benchmarks/llama_cpp.py gguf Q8_0        # GPT-2 124M, random weights, as GGUF
    .venv/bin/python benchmarks/llama_cpp.py compare [--pairs none:F32,float16:F16,dynamic_int8:Q8_0,int4_blockwise:Q4_0]
        [--rounds 2] [--threads 2] [--doc docs/performance.md]  # both engines side by side, ~25 min

The source is the llama.cpp tree vendored by the ``llama-cpp-python`` sdist on PyPI (the only way
to llama.cpp from a machine that reaches package registries only): ``pip download --no-deps
--no-binary :all: llama-cpp-python``, unpacked and built with CMake for this CPU (about 6 minutes
on 2 cores), all under ``build/llama_cpp/`` and reused by later runs. ``LLAMA_CPP_DIR`` names an
already unpacked tree instead (its ``build/bin`` is reused when it holds the tools, built without AMX).

GGUF files: the same architecture as ``llm-tflite convert gpt2_base_en --random-weights``
(12 layers, 768 wide, 12 heads, 3,072 MLP, 1,024 positions, 50,257 tokens) with random weights
(speed does not depend on their values), its tokenizer and hyperparameters copied from the
vocab-only ``models/ggml-vocab-gpt-2.gguf`` the llama.cpp tree ships; F32, then
``llama-quantize`` to F16, Q8_0 or Q4_0. Not a test: a benchmark helper.

``compare``: for each pair of our strategy and a GGUF type, ``llm-tflite bench`` on our file
(``convert gpt2_base_en --random-weights``, context 1,024) and ``llama-bench`` on the GGUF, in
fresh processes, pair after pair, round after round (so a slow minute of the machine falls on
both engines): decode early (100 tokens after 8), decode late (the last 100 of 1,024 positions:
``llama-bench -d 924``), prefill of 8, 64 and 256 tokens. llama.cpp keeps its defaults (KV cache
f16, flash attention as it decides); ``--llama-args`` adds to them (``-ctk q8_0 -ctv q8_0``).
Writes every figure to ``build/llama_cpp/compare.json`` and the ratios (ours / llama.cpp, the
lowest and highest over the rounds), a plot and the command into ``--doc`` between the
``<!-- llama_cpp -->`` markers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
WORK = ROOT / "build" / "llama_cpp"
SDIST = "llama-cpp-python==0.3.36"
TOOLS = ("llama-server", "llama-bench", "llama-quantize")


def source_dir() -> pathlib.Path:
    """The llama.cpp source tree (downloaded and unpacked once)."""
    given = os.environ.get("LLAMA_CPP_DIR")
    if given:
        return pathlib.Path(given)
    found = glob.glob(str(WORK / "src" / "llama_cpp_python-*" / "vendor" / "llama.cpp"))
    if found:
        return pathlib.Path(found[0])
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"downloading {SDIST} (its vendored llama.cpp source)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                    "-d", str(WORK)], check=True)
    (WORK / "src").mkdir(exist_ok=True)
    archive = sorted(WORK.glob("llama_cpp_python-*.tar.gz"))[-1]
    subprocess.run(["tar", "xzf", str(archive), "-C", str(WORK / "src")], check=True)
    return source_dir()


def tools() -> pathlib.Path:
    """The directory holding ``llama-server``, ``llama-bench`` and ``llama-quantize`` (built once)."""
    source = source_dir()
    bin_dir = source / "build" / "bin"
    cache = source / "build" / "CMakeCache.txt"
    if all((bin_dir / tool).exists() for tool in TOOLS) and "mno-amx" in (cache.read_text() if cache.exists() else ""):
        return bin_dir
    print("building llama.cpp (CPU, this machine's instructions; ~6 min on 2 cores)", file=sys.stderr)
    # This VM's CPU lists AMX, but the hypervisor does not enable its state: AMX tile instructions
    # trap ("invalid opcode" in libggml-cpu: Q8_0 prompt processing died with SIGSEGV), so -march=native without them.
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                    f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"],
                   cwd=source, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", "build", "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
                   cwd=source, check=True, stdout=subprocess.DEVNULL)
    return bin_dir


def gguf_module():
    """The ``gguf`` package of the same llama.cpp tree."""
    sys.path.insert(0, str(source_dir() / "gguf-py"))
    import gguf

    return gguf


def write_gpt2_f32(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """GPT-2 124M with random weights as an F32 GGUF (tensor shapes as llama.cpp's ``models/gpt2.cpp``)."""
    import numpy as np

    gguf = gguf_module()
    vocab = gguf.GGUFReader(str(source_dir() / "models" / "ggml-vocab-gpt-2.gguf"))
    fields = {name: field for name, field in vocab.fields.items() if not name.startswith("GGUF.")}

    def value(name):
        return fields[name].contents()

    layers, hidden = value("gpt2.block_count"), value("gpt2.embedding_length")
    mlp, positions = value("gpt2.feed_forward_length"), value("gpt2.context_length")
    tokens = len(value("tokenizer.ggml.tokens"))
    writer = gguf.GGUFWriter(str(path), "gpt2")
    for name, field in fields.items():
        if name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), kind)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(seed)

    def tensor(name, *shape):  # numpy order: ggml's dimensions reversed
        writer.add_tensor(name, (rng.standard_normal(shape, np.float32) * 0.02).astype(np.float32))

    tensor("token_embd.weight", tokens, hidden)
    tensor("position_embd.weight", positions, hidden)
    tensor("output_norm.weight", hidden)
    tensor("output_norm.bias", hidden)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            tensor(f"blk.{i}.{norm}.weight", hidden)
            tensor(f"blk.{i}.{norm}.bias", hidden)
        tensor(f"blk.{i}.attn_qkv.weight", 3 * hidden, hidden)
        tensor(f"blk.{i}.attn_qkv.bias", 3 * hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_output.bias", hidden)
        tensor(f"blk.{i}.ffn_up.weight", mlp, hidden)
        tensor(f"blk.{i}.ffn_up.bias", mlp)
        tensor(f"blk.{i}.ffn_down.weight", hidden, mlp)
        tensor(f"blk.{i}.ffn_down.bias", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gpt2_gguf(kind: str = "Q8_0") -> pathlib.Path:
    """GPT-2 124M (random weights) as a GGUF of ``kind`` (F32, F16, Q8_0, Q4_0), written once."""
    WORK.mkdir(parents=True, exist_ok=True)
    f32 = WORK / "gpt2_base_f32.gguf"
    if not f32.exists():
        write_gpt2_f32(f32.with_suffix(".partial"))
        f32.with_suffix(".partial").rename(f32)
    if kind == "F32":
        return f32
    out = WORK / f"gpt2_base_{kind.lower()}.gguf"
    if not out.exists():
        subprocess.run([str(tools() / "llama-quantize"), str(f32), str(out), kind], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


PAIRS = "none:F32,float16:F16,dynamic_int8:Q8_0,int4_blockwise:Q4_0"
PROMPTS = (8, 64, 256)
MARK_BEGIN, MARK_END = "<!-- llama_cpp -->", "<!-- /llama_cpp -->"
#: Figure name -> what it measures; the keys of one engine's figures.
FIGURES = {"decode early": "decode tok/s, positions 8-108", "decode late": "decode tok/s, positions 924-1,024",
           **{f"prefill {n}": f"prefill of {n} tokens, tok/s" for n in PROMPTS}}


def our_file(strategy: str, context: int, extra: list[str]) -> pathlib.Path:
    """GPT-2 124M (random weights) converted with ``strategy`` at ``context`` (written once)."""
    tag = "".join(f"_{a.lstrip('-')}" for a in extra).replace("=", "-")
    path = WORK / f"ours_gpt2_base_{strategy}_{context}{tag}.tflite"
    if not path.exists():
        print(f"converting gpt2_base_en --random-weights --quantize {strategy}", file=sys.stderr, flush=True)
        subprocess.run([str(BIN / "llm-tflite"), "-q", "convert", "gpt2_base_en", "--random-weights", "--quantize",
                        strategy, "--context-length", str(context), *extra, "-o", str(path)], check=True)
    return path


def ours(path: pathlib.Path, threads: int, context: int, runs: int) -> dict:
    """Our figures for one file: ``llm-tflite bench --json`` in a fresh process."""
    done = subprocess.run([str(BIN / "llm-tflite"), "-q", "bench", str(path), "--prompt-tokens",
                           ",".join(map(str, PROMPTS)), "--new-tokens", "100", "--runs", str(runs), "--threads",
                           str(threads), "--json"], capture_output=True, text=True, check=True,
                          env={**os.environ, "LLM_TFLITE_NO_PROGRESS": "1"})
    bench = json.loads(done.stdout)
    assert bench["decode_late"]["positions"] == [context - 100, context], bench["decode_late"]
    return {"decode early": bench["decode_tokens_per_s"], "decode late": bench["decode_late"]["median"],
            **{f"prefill {n}": bench["prefill"][str(n)]["tokens_per_s"] for n in PROMPTS}}


def llama(gguf: pathlib.Path, threads: int, context: int, runs: int, extra: list[str]) -> dict:
    """llama.cpp's figures for one GGUF: ``llama-bench -o json`` (average of ``runs`` repetitions)."""
    def bench(*args):
        done = subprocess.run([str(tools() / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", str(runs),
                               "-o", "json", *extra, *args], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    figures = {}
    for row in bench("-p", ",".join(map(str, PROMPTS)), "-n", "0"):
        figures[f"prefill {row['n_prompt']}"] = row["avg_ts"]
    for row in bench("-p", "0", "-n", "100", "-d", f"{min(PROMPTS)},{context - 100}"):
        figures["decode early" if row["n_depth"] == min(PROMPTS) else "decode late"] = row["avg_ts"]
    return figures


def compare(args) -> dict:
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    # OURS is a strategy, or a strategy with int8 caches: dynamic_int8+kv-int8
    files = {s: our_file(s.split("+")[0], args.context,
                         args.convert_args.split() + (["--kv-cache", "int8"] if s.endswith("+kv-int8") else []))
             for s, _ in pairs}
    ggufs = {k: gpt2_gguf(k) for _, k in pairs}
    runs = []
    for round_ in range(args.rounds):
        for strategy, kind in pairs:
            mine = ours(files[strategy], args.threads, args.context, args.runs)
            theirs = llama(ggufs[kind], args.threads, args.context, args.runs, args.llama_args.split())
            runs.append({"round": round_, "ours": strategy, "llama_cpp": kind, "ours_figures": mine,
                         "llama_cpp_figures": theirs})
            print(f"round {round_ + 1} {strategy} / {kind}: " + ", ".join(
                f"{name} {mine[name]:.1f}/{theirs[name]:.1f} ({mine[name] / theirs[name]:.2f}x)" for name in FIGURES),
                  file=sys.stderr, flush=True)
    return {"pairs": pairs, "runs": runs, "threads": args.threads, "context": args.context,
            "llama_args": args.llama_args, "convert_args": args.convert_args, "rounds": args.rounds,
            "command": " ".join(["benchmarks/llama_cpp.py", *sys.argv[1:]])}


def write_doc(result: dict, doc: pathlib.Path) -> None:
    """The ratios table and plot between the ``<!-- llama_cpp -->`` markers of ``doc``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def runs(strategy, kind):
        return [r for r in result["runs"] if (r["ours"], r["llama_cpp"]) == (strategy, kind)]

    def ratios(strategy, kind, name):
        return [r["ours_figures"][name] / r["llama_cpp_figures"][name] for r in runs(strategy, kind)]

    def medians(strategy, kind, engine, name):
        return statistics.median(r[engine][name] for r in runs(strategy, kind))

    extra = f", llama.cpp `{result['llama_args']}`" if result["llama_args"] else ""
    lines = [f"Measured {__import__('datetime').date.today()} on this machine ({os.cpu_count()} cores), GPT-2 124M "
             f"with random weights, context {result['context']:,}, {result['threads']} threads, "
             f"{result['rounds']} interleaved rounds{extra}: `.venv/bin/python {result['command']}`.",
             "", "| ours / llama.cpp | " + " | ".join(FIGURES) + " |", "|---|" + "---:|" * len(FIGURES)]
    for strategy, kind in result["pairs"]:
        cells = []
        for name in FIGURES:
            values = ratios(strategy, kind, name)
            low, high = min(values), max(values)
            cells.append(f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x")
        lines.append(f"| {strategy} / {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Tokens/s behind the ratios (medians over the rounds, ours / llama.cpp):", "",
              "| ours / llama.cpp | " + " | ".join(FIGURES) + " |", "|---|" + "---:|" * len(FIGURES)]
    for strategy, kind in result["pairs"]:
        lines.append(f"| {strategy} / {kind} | " + " | ".join(
            f"{medians(strategy, kind, 'ours_figures', n):.1f} / {medians(strategy, kind, 'llama_cpp_figures', n):.1f}"
            for n in FIGURES) + " |")
    figure = doc.parent / "images" / "llama_cpp.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(result["pairs"])
    for i, (strategy, kind) in enumerate(result["pairs"]):
        xs = [x + (i - (len(result["pairs"]) - 1) / 2) * width for x in range(len(FIGURES))]
        lows = [min(ratios(strategy, kind, n)) for n in FIGURES]
        highs = [max(ratios(strategy, kind, n)) for n in FIGURES]
        ax.bar(xs, highs, width, label=f"{strategy} / {kind}", alpha=0.85)
        ax.scatter(xs, lows, color="k", s=8, zorder=3)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(FIGURES)), list(FIGURES))
    ax.set_ylabel("ours / llama.cpp (bar: best round, dot: worst)")
    ax.set_title(f"GPT-2 124M, context {result['context']}, {result['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=100)
    section = "\n".join([MARK_BEGIN, *lines, "", f"![ours against llama.cpp]({figure.relative_to(doc.parent)})",
                         MARK_END])
    text = doc.read_text(encoding="utf-8")
    if MARK_BEGIN not in text:
        text += f"\n## Side by side with llama.cpp\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    doc.write_text(head + section + rest.split(MARK_END, 1)[1], encoding="utf-8")
    print(f"wrote {doc} and {figure}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="build the tools; print their directory")
    gguf = sub.add_parser("gguf", help="write GPT-2 124M (random weights) as GGUF; print its path")
    gguf.add_argument("kind", nargs="?", default="Q8_0", choices=["F32", "F16", "Q8_0", "Q4_0"])
    both = sub.add_parser("compare", help="both engines side by side; the ratios into --doc")
    both.add_argument("--pairs", default=PAIRS, help=f"OURS:GGUF_TYPE,... (default: {PAIRS}); OURS+kv-int8 "
                      "converts with --kv-cache int8")
    both.add_argument("--rounds", type=int, default=2)
    both.add_argument("--runs", type=int, default=3, help="repetitions inside each engine's benchmark")
    both.add_argument("--threads", type=int, default=2)
    both.add_argument("--context", type=int, default=1024)
    both.add_argument("--convert-args", default="", help="more `llm-tflite convert` options for our files")
    both.add_argument("--llama-args", default="", help="more llama-bench options, e.g. '-ctk q8_0 -ctv q8_0'")
    both.add_argument("--out", default=str(WORK / "compare.json"))
    both.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    both.add_argument("--doc-only", action="store_true", help="rewrite the doc from --out")
    args = parser.parse_args()
    if args.command == "compare":
        out = pathlib.Path(args.out)
        if not args.doc_only:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(compare(args), indent=1))
        write_doc(json.loads(out.read_text()), pathlib.Path(args.doc))
        return 0
    print(tools() if args.command == "tools" else gpt2_gguf(args.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
