"""llama.cpp as a peer: its tools built from source, and our architectures written as GGUF.

    .venv/bin/python benchmarks/llama_cpp.py tools            # build llama-server, llama-bench, llama-quantize
    .venv/bin/python benchmarks/llama_cpp.py gguf Q8_0        # GPT-2 124M, random weights, as GGUF

The source is the llama.cpp tree vendored by the ``llama-cpp-python`` sdist on PyPI (the only way
to llama.cpp from a machine that reaches package registries only): ``pip download --no-deps
--no-binary :all: llama-cpp-python``, unpacked and built with CMake for this CPU (about 6 minutes
on 2 cores), all under ``build/llama_cpp/`` and reused by later runs. ``LLAMA_CPP_DIR`` names an
already unpacked tree instead (its ``build/bin`` is reused when it holds the tools).

GGUF files: the same architecture as ``llm-tflite convert gpt2_base_en --random-weights``
(12 layers, 768 wide, 12 heads, 3,072 MLP, 1,024 positions, 50,257 tokens) with random weights
(speed does not depend on their values), its tokenizer and hyperparameters copied from the
vocab-only ``models/ggml-vocab-gpt-2.gguf`` the llama.cpp tree ships; F32, then
``llama-quantize`` to F16, Q8_0 or Q4_0. Not a test: a benchmark helper.
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
    if all((bin_dir / tool).exists() for tool in TOOLS):
        return bin_dir
    print("building llama.cpp (CPU, this machine's instructions; ~6 min on 2 cores)", file=sys.stderr)
    subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="build the tools; print their directory")
    gguf = sub.add_parser("gguf", help="write GPT-2 124M (random weights) as GGUF; print its path")
    gguf.add_argument("kind", nargs="?", default="Q8_0", choices=["F32", "F16", "Q8_0", "Q4_0"])
    args = parser.parse_args()
    print(tools() if args.command == "tools" else gpt2_gguf(args.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
