"""Test helpers for model families (built-in and plugins), so a family's tests are a page long.

Example (a plugin's test file):
    >>> from llm_tflite.testing import run_parity_test, run_greedy_test  # doctest: +SKIP
    >>> run_parity_test(keras_model, "model.tflite")  # doctest: +SKIP

They need TensorFlow and KerasHub (the Keras side of each comparison) and pytest-style asserts.
"""

from __future__ import annotations

import numpy as np

from llm_tflite import InterpreterRunner
from llm_tflite.litert import flatbuffer, metadata
from llm_tflite.evaluation.metrics import keras_logits_fn
from llm_tflite.families.base import without_preprocessor

PARITY_PROMPTS = (
    "First Citizen:",
    "ROMEO:\nBut soft, what light through yonder window breaks?",
    "a",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune",
)


def run_parity_test(lm, tflite_path, prompts=PARITY_PROMPTS, tolerance=1e-4) -> float:
    """TFLite logits at every position match Keras within ``tolerance`` (max abs / std). Returns the worst."""
    runner = InterpreterRunner(tflite_path)
    worst = 0.0
    for prompt in prompts:
        ids = runner.encode(prompt)
        expected = keras_logits_fn(lm)(ids)
        got = runner.logits(ids)
        assert got.shape == expected.shape
        error = float(np.abs(got - expected).max() / expected.std())
        assert error < tolerance, f"{prompt!r}: normalised max abs error {error:.2e}"
        worst = max(worst, error)
    return worst


def run_cached_parity_test(lm, tflite_path, prompt_ids, step_ids, tolerance=1e-4) -> float:
    """The file's logits over ``prompt_ids`` (prefill signatures) and then ``step_ids`` one at a time
    (decode signatures, reading the cache) equal Keras's logits of the whole sequence within
    ``tolerance`` (max abs / std). Returns the error."""
    runner = InterpreterRunner(tflite_path)
    sequence = runner.sequence()
    got = np.concatenate([sequence.feed(list(prompt_ids))] + [sequence.feed([int(t)]) for t in step_ids])
    expected = keras_logits_fn(lm)(list(prompt_ids) + list(step_ids))
    assert got.shape == expected.shape
    error = float(np.abs(got - expected).max() / expected.std())
    assert error < tolerance, f"normalised max abs error {error:.2e} over {len(prompt_ids)} + {len(step_ids)} tokens"
    # As generation runs it: the prompt through prefill signatures without logits, its last token
    # and the steps through decode.
    sequence = runner.sequence()
    got = np.stack([sequence.feed_last(list(prompt_ids))] + [sequence.feed_last([int(t)]) for t in step_ids])
    tail = expected[len(prompt_ids) - 1 :]
    generation_error = float(np.abs(got - tail).max() / expected.std())
    assert generation_error < tolerance, f"feed_last: normalised max abs error {generation_error:.2e}"
    return max(error, generation_error)


def keras_greedy_ids(lm, prompt_ids, max_new_tokens, eos_id) -> list[int]:
    """``lm.generate`` with ``GreedySampler`` on token ids; the new ids up to the end token."""
    import keras_hub

    return keras_generate_ids(lm, keras_hub.samplers.GreedySampler(), prompt_ids, max_new_tokens, eos_id)


def keras_generate_ids(lm, sampler, prompt_ids, max_new_tokens, eos_id, stop_token_ids=None) -> list[int]:
    """``lm.generate`` with a KerasHub ``sampler`` on token ids; the new ids up to the end token.

    ``stop_token_ids`` as KerasHub takes them (``None``: run all ``max_new_tokens`` steps).
    """
    total = len(prompt_ids) + max_new_tokens
    token_ids = np.zeros((1, total), np.int32)
    token_ids[0, : len(prompt_ids)] = prompt_ids
    padding_mask = np.zeros((1, total), bool)
    padding_mask[0, : len(prompt_ids)] = True
    with without_preprocessor(lm):
        lm.compile(sampler=sampler)
        out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=stop_token_ids)
    new = [int(t) for t in np.asarray(out["token_ids"])[0, len(prompt_ids):]]
    return new[: new.index(eos_id)] if eos_id in new else new


def run_greedy_test(lm, tflite_path, prompt, max_new_tokens=64, compare_text=True) -> str:
    """InterpreterRunner's greedy continuation equals ``lm.generate`` with the greedy sampler.

    Token for token on the same prompt ids; with ``compare_text`` also as text through
    ``lm.generate(prompt)`` (prompts whose tokens KerasHub's eager tokenizer gets right).
    """
    runner = InterpreterRunner(tflite_path)
    prompt_ids = runner.encode(prompt)
    got_ids = list(runner.generate_ids(prompt_ids, max_new_tokens, "greedy"))
    assert got_ids == keras_greedy_ids(lm, prompt_ids, max_new_tokens, runner.eos_id)
    got = prompt + runner.generate(prompt, max_new_tokens=max_new_tokens, sampler="greedy")
    if compare_text:
        lm.compile(sampler="greedy")
        assert got == lm.generate(prompt, max_length=len(prompt_ids) + max_new_tokens)
    return got


def run_prefill_decode_file_test(tflite_path, num_layers) -> dict:
    """Signatures, cache tensors, tensor ranks and operator set of a prefill_decode file."""
    data = open(tflite_path, "rb").read()
    assert flatbuffer.non_builtin_ops(data) == set()
    meta = metadata.read_metadata_from_bytes(data)
    from ai_edge_litert.interpreter import Interpreter

    from llm_tflite.runtime.prefill_decode import caches_only

    interpreter = Interpreter(model_content=data)
    signatures = interpreter.get_signature_list()
    assert "decode" in signatures
    assert {f"prefill_{n}" for n in meta["prefill_lengths"]} <= set(signatures)
    assert {f"score_{n}" for n in meta["score_lengths"]} <= set(signatures)
    assert {f"decode_window_{w}" for w in meta.get("decode_windows", [])} <= set(signatures)
    assert {f"window_{w}_prefill_{n}" for w in meta.get("prefill_windows", []) for n in meta["prefill_lengths"]
            if n < w} <= set(signatures)
    prompt_lengths = meta.get("prompt_lengths", [])
    prompts = {f"prompt_{n}" for n in prompt_lengths} | {
        f"window_{w}_prompt_{n}" for w in meta.get("prefill_windows", []) for n in prompt_lengths if n < w}
    assert prompts <= set(signatures)
    scales = ("", "_scale") if meta["kv_cache"].get("dtype") == "int8" else ("",)  # int8 caches' scales beside them
    caches = {f"kv_cache_{kind}_{i}{suffix}" for i in range(num_layers) for kind in "kv" for suffix in scales}
    for name, sig in signatures.items():
        expected = caches
        if name.startswith("decode_batch_"):  # decode_batch_{B}[_window_{W}]: each row's own caches
            expected = {f"{c}_row{b}" for c in caches for b in range(int(name.split("_")[2]))}
        assert set(sig["inputs"]) == expected | {"tokens", "input_pos"} | ({"last"} if name in prompts else set()), name
        # prefill_{L}: the caches only, as LiteRT-LM's files; score_{L} and decode: logits too
        assert set(sig["outputs"]) == expected | (set() if caches_only(name) else {"logits"}), name
    assert all(len(t["shape"]) <= 5 for t in interpreter.get_tensor_details())
    return meta


#: Tiny Hugging Face configurations of the core decoder families (``write_hf_checkpoint``): grouped-query
#: attention, Gemma's local windows (5 of 6 layers), Llama 3.1's RoPE scaling, Qwen's query/key norms.
HF_TINY = {
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 4096,
               "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-6,
               "sliding_window": 24, "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "final_logit_softcapping": None,
               "attn_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
               "max_position_embeddings": 32768, "tie_word_embeddings": True, "bos_token_id": 2,
               "eos_token_id": 1, "pad_token_id": 0, "torch_dtype": "float32"},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 2304, "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
              "use_sliding_window": False, "sliding_window": None, "max_position_embeddings": 40960,
              "hidden_act": "silu", "torch_dtype": "float32"},
    "llama3": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2304, "hidden_size": 128,
               "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
               "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 64},
               "max_position_embeddings": 131072, "hidden_act": "silu", "torch_dtype": "float32"},
}


#: The pre-tokenizer patterns of the published Qwen 3 and Llama 3 ``tokenizer.json`` files.
HF_SPLIT_PATTERNS = {
    "qwen3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}


def hf_weight_shapes(family: str, config: dict) -> dict[str, tuple]:
    """Names and shapes of a Hugging Face checkpoint's tensors (``transformers``' ``state_dict``) for a
    core decoder family: ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ..."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    norms = ["input_layernorm", "post_attention_layernorm"]
    if family == "gemma3":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes.update({layer + f"{norm}.weight": (hidden,) for norm in norms})
        shapes.update({layer + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                       layer + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                       layer + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                       layer + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                       layer + "mlp.gate_proj.weight": (inter, hidden), layer + "mlp.up_proj.weight": (inter, hidden),
                       layer + "mlp.down_proj.weight": (hidden, inter)})
        if family in ("gemma3", "qwen3"):
            shapes.update({layer + "self_attn.q_norm.weight": (head_dim,), layer + "self_attn.k_norm.weight": (head_dim,)})
    if not config.get("tie_word_embeddings", family != "llama3"):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def write_hf_checkpoint(directory, family: str, config: dict | None = None, *, seed: int = 0,
                        added_tokens: tuple[str, ...] = (), tokenizer_size: int | None = None) -> str:
    """Write a random-weight Hugging Face checkpoint of a core decoder family into ``directory``, in
    the layout ``save_pretrained`` writes: ``config.json``, ``model.safetensors`` (float32), and the
    family's tokenizer files (``tokenizer.model`` for Gemma 3, built from the shipped Gemma-style
    SentencePiece model; ``tokenizer.json`` for Qwen 3 and Llama 3, from the shipped byte-level BPE
    with the family's special tokens, split as the published ones split text; ``tokenizer_config.json``).
    ``added_tokens``: tokens a fine-tune added (BPE families; added as ``tokenizers`` adds
    non-special tokens: kept whole, decoded as text), given the tokenizer's last ids; ``tokenizer_size``: ids
    in the tokenizer, when the embedding has more rows (default: ``vocab_size``). Returns the path.
    """
    import json
    import os

    from safetensors.numpy import save_file

    config = dict(config or HF_TINY[family])
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in hf_weight_shapes(family, config).items():
        if len(shape) == 1:  # norms: Gemma stores w of (1 + w); the others w itself
            tensors[name] = (rng.normal(0, 0.1, shape) + (0 if family == "gemma3" else 1)).astype(np.float32)
        else:
            tensors[name] = rng.normal(0, 0.05 if "embed" in name else shape[1] ** -0.5, shape).astype(np.float32)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    tokenizer_config = _write_hf_tokenizer(directory, family, tokenizer_size or config["vocab_size"], added_tokens)
    tokenizer_config["chat_template"] = family_chat_template(family)  # as instruction-tuned checkpoints carry it
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return os.fspath(directory)


def family_chat_template(family: str) -> str:
    """The published chat template of a core family's instruction-tuned models (its Hugging Face
    ``tokenizer_config.json``'s ``chat_template``), as the package ships it."""
    import os

    from llm_tflite.plugins.registry import get_family

    name = get_family(family).chat_template_file
    with open(os.path.join(os.path.dirname(__file__), "families", "chat_templates", name), encoding="utf-8") as f:
        return f.read()


def _write_hf_tokenizer(directory, family: str, vocab_size: int, added_tokens) -> dict:
    import os

    if family == "gemma3":
        from llm_tflite.families.presets import GEMMA_TOKENIZER
        from llm_tflite.tokenizers.spm_training import extend_sentencepiece

        if added_tokens:
            raise ValueError("added_tokens: BPE families only")
        with open(GEMMA_TOKENIZER, "rb") as f:
            proto = extend_sentencepiece(f.read(), vocab_size)
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(proto)
        return {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                "add_bos_token": True, "tokenizer_class": "GemmaTokenizer"}
    from tokenizers import Regex, normalizers, pre_tokenizers

    from llm_tflite.families.presets import borrowed_bpe
    from llm_tflite.tokenizers.bpe_training import hf_tokenizer

    specials = {"qwen3": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                "llama3": ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>")}[family]
    vocabulary, merges = borrowed_bpe(vocab_size - len(added_tokens), specials)
    for token in added_tokens:
        vocabulary[token] = len(vocabulary)
    tokenizer = hf_tokenizer(vocabulary, merges, specials, added_tokens)
    # the published tokenizers' own splitting (not GPT-2's): digits one by one (Qwen) or in threes
    # (Llama 3), letters with the punctuation before them, newlines apart; Qwen normalizes to NFC
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HF_SPLIT_PATTERNS[family]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if family == "qwen3":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    if family == "qwen3":
        return {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                "tokenizer_class": "Qwen2Tokenizer"}
    return {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "tokenizer_class": "PreTrainedTokenizerFast"}


def engine_steps_agreeing(steps: list[str], runner, token_ids: list[int]) -> int:
    """How many of LiteRT-LM's decode steps (the text it reports for each) are our tokens
    ``token_ids``, read with ``runner``'s tokenizer. The engine shows each step as text: a token
    that is part of a character shows as U+FFFD, SentencePiece drops the space that opens a text,
    and where the engine held steps back and sent them together, agreement means the same text."""
    expected = [runner.tokenizer.decode_bytes([t]) for t in token_ids]
    if runner.metadata["tokenizer"]["type"] == "sentencepiece" and expected and expected[0].startswith(b" "):
        expected[0] = expected[0][1:]

    def same(text: str, token_bytes: bytes) -> bool:
        try:
            return text == token_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return text == "\ufffd"

    if len(steps) == len(expected):  # one text per decode step: token for token
        return sum(map(same, steps, expected))
    joined = b"".join(expected).decode("utf-8", errors="replace")
    return len(expected) if "".join(steps) == joined else 0


class ServerThread:
    """An app (``llm_tflite.serve.app.create_app``) served by uvicorn in a thread, on a free loopback
    port, as ``llm-tflite serve`` serves it (``graceful_server``), for tests and examples: ``url``,
    ``server`` (``server.handle_exit(signal.SIGTERM, None)`` is what SIGTERM does), and ``stop()``."""

    def __init__(self, app, grace_seconds: float = 15):
        import socket
        import threading
        import time

        from llm_tflite.serve.app import graceful_server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = graceful_server(app, host="127.0.0.1", port=self.port, log_level="warning",
                                      timeout_graceful_shutdown=grace_seconds)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
