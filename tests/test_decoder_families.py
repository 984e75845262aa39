"""Gemma 3, Qwen 3 and Llama 3.x through the decoder kit: tiny random models of each family against
KerasHub (cached logits, greedy tokens), every strategy, LiteRT-LM's engine; the presets' shapes."""

import numpy as np
import pytest

from conftest import assert_same_as_ai_edge_quantizer, assert_signatures_compute_the_same
from llm_tflite import Converter, InterpreterRunner, load_model, read_metadata
from llm_tflite.errors import ModelFileError
from llm_tflite.plugins.registry import get_family
from llm_tflite.testing import (engine_steps_agreeing, run_cached_parity_test, run_greedy_test,
                                run_prefill_decode_file_test)

#: Small shapes that still exercise each family's choices (widths of 128, so int4 blocks of 128 fit):
#: grouped-query attention everywhere; Gemma's
#: local windows (5 of 6 layers, a window shorter than the test's 96 tokens), its other query scale and
#: both soft-caps, a head_dim (64) other than width / heads; Llama 3.1's
#: frequency-dependent RoPE scaling with a pretraining length of 64.
TINY = {
    "gemma3": dict(vocabulary_size=4096, image_size=None, num_layers=6, num_query_heads=4, num_key_value_heads=2,
                   hidden_dim=128, intermediate_dim=256, head_dim=64, query_head_dim_normalize=False,
                   use_query_key_norm=True, use_post_ffw_norm=True, use_post_attention_norm=True,
                   attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0, use_sliding_window_attention=True,
                   sliding_window_size=24, layer_norm_epsilon=1e-6),
    "qwen3": dict(vocabulary_size=2304, num_layers=2, num_query_heads=4, num_key_value_heads=2, head_dim=32,
                  hidden_dim=128, intermediate_dim=256, rope_max_wavelength=1000000, tie_word_embeddings=True,
                  sliding_window_size=None),
    "llama3": dict(vocabulary_size=2304, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=128,
                   intermediate_dim=256, rope_max_wavelength=500000, rope_frequency_adjustment_factor=32.0,
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_pretraining_sequence_length=64,
                   layer_norm_epsilon=1e-5, tie_word_embeddings=False),
}
FAMILIES = sorted(TINY)
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family name -> (Keras model, its float32 file); built once per family."""
    built = {}

    def get(name):
        if name not in built:
            family = get_family(name)
            lm = family.load(f"tiny_{name}", random_weights=True, config=TINY[name])
            assert lm.backbone.count_params() == family.count_weights(TINY[name])
            path = tmp_path_factory.mktemp(name) / f"{name}.tflite"
            Converter(context_length=128, prefill_lengths=(8, 32)).convert(lm, str(path), family=name)
            built[name] = lm, path
        return built[name]

    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_logits_equal_keras_hub(tiny, name):
    """A 64-token prompt (prefill signatures) and 32 cached steps (decode signatures) give KerasHub's logits."""
    lm, path = tiny(name)
    meta = run_prefill_decode_file_test(path, num_layers=TINY[name]["num_layers"])
    assert meta["family"] == name and meta["kv_cache"]["num_kv_heads"] == 2
    ids = [int(i) for i in np.random.default_rng(7).integers(10, TINY[name]["vocabulary_size"] - 10, 96)]
    assert run_cached_parity_test(lm, path, ids[:64], ids[64:]) < 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_tokens_equal_keras_hub(tiny, name):
    """24 greedy tokens equal KerasHub's: lm.generate where it runs on token ids, else its forward pass
    over the whole text, once per token (Gemma 3's generate needs its preprocessor's image inputs)."""
    from llm_tflite.evaluation.metrics import keras_logits_fn

    lm, path = tiny(name)
    if name != "gemma3":
        run_greedy_test(lm, path, PROMPT, max_new_tokens=24, compare_text=False)
        return
    runner = InterpreterRunner(path)
    ids = runner.encode(PROMPT)
    expected, forward = [], keras_logits_fn(lm)
    for _ in range(24):
        token = int(forward(ids + expected)[-1].argmax())
        if token == runner.eos_id:
            break
        expected.append(token)
    assert list(runner.generate_ids(ids, 24, "greedy")) == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_dynamic_int8_stores_every_matrix_as_int8(tiny, tmp_path, name):
    """No float32 matrix is left in a dynamic_int8 file: TensorFlow's converter would push an RMSNorm's
    scale into the next matmul's weight (a MUL over the whole weight at every call, stored float32)."""
    from llm_tflite.litert.flatbuffer import tflite_schema

    lm, _ = tiny(name)
    path = tmp_path / "int8.tflite"
    Converter(quantize="dynamic_int8", context_length=128, prefill_lengths=(8,)).convert(lm, str(path), family=name)
    schema = tflite_schema()
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    subgraph = model.Subgraphs(0)
    tensors = [subgraph.Tensors(t) for t in range(subgraph.TensorsLength())]
    weights = [t for t in tensors if b"weight_" in t.Name() and t.ShapeLength() == 2]  # the bound weights
    assert weights and [t.Name() for t in weights if t.Type() == schema.TensorType.FLOAT32] == []


def test_the_kit_is_what_differs(tiny):
    """Each family's choices reach its blocks: Gemma's five local layers to one global, post norms,
    soft-cap and query scale; Qwen's query/key norms; Llama's plain attention."""
    family = get_family("gemma3")
    lm, _ = tiny("gemma3")
    blocks = family.blocks(lm)
    assert [b.attention.sliding_window for b in blocks] == [24, 24, 24, 24, 24, None]
    assert blocks[0].post_attention_norm is not None and blocks[0].attention.soft_cap == 50.0
    # KerasHub's Gemma3DecoderBlock gives its attention query_head_dim_normalize=True whatever the backbone
    # says, and the kit reads the attention layer: 1/sqrt(head_dim) (parity above checks it is KerasHub's)
    assert abs(blocks[0].attention.scale - 1 / 64 ** 0.5) < 1e-12
    qwen = get_family("qwen3").blocks(tiny("qwen3")[0])[0]
    assert qwen.attention.query_norm is not None and qwen.post_attention_norm is None
    assert get_family("llama3").blocks(tiny("llama3")[0])[0].attention.query_norm is None


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dynamic_int8", "int4_blockwise", "int4_blockwise_128", "float16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_strategy_converts_and_agrees_with_float(tiny, tmp_path, name, strategy):
    """Quantized files generate, and their next-token choice agrees with the float file's far above chance
    (1 in 2,304+). Random weights give nearly flat logits, so int4's noise flips many argmaxes here:
    the quality figures of trained models are `compare`'s (docs/quantization.md)."""
    lm, float_path = tiny(name)
    path = tmp_path / f"{name}_{strategy}.tflite"
    Converter(quantize=strategy, context_length=128, prefill_lengths=(8, 32)).convert(lm, str(path), family=name)
    runner, reference = InterpreterRunner(path), InterpreterRunner(float_path)
    ids = runner.encode(PROMPT)
    agree = np.mean(runner.logits(ids).argmax(-1) == reference.logits(ids).argmax(-1))
    assert agree >= (0.9 if strategy in ("float16", "dynamic_int8") else 0.25), agree
    assert runner.complete(PROMPT, 16, stop_token_ids=[]).completion_tokens == 16
    if strategy.startswith("int4"):  # bound into the graph as ai-edge-quantizer would have written them
        assert_same_as_ai_edge_quantizer(path, float_path, strategy)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_litert_lm_engine_decodes_our_greedy_tokens(tiny, tmp_path, name):
    import litert_lm

    from llm_tflite.export.bundle import build_bundle

    lm, path = tiny(name)
    if name == "gemma3":  # LiteRT-LM 0.18 takes the shortest cache as its token limit: rings stored context-shaped
        with pytest.raises(ModelFileError, match="--format litertlm"):
            build_bundle(path, tmp_path / "ring.litertlm")
        path = tmp_path / "rings_as_context.tflite"
        Converter(context_length=128, prefill_lengths=(8, 32), ring_caches="litertlm").convert(lm, str(path),
                                                                                               family=name)
        assert read_metadata(path)["kv_cache"]["lengths"] == [56] * 5 + [128]  # the prompt and 32 tokens wrap them
    bundle = build_bundle(path, tmp_path / f"{name}.litertlm")
    runner = InterpreterRunner(bundle)
    ours = list(runner.generate_ids(runner.encode(PROMPT), 32, stop_token_ids=[]))
    engine = litert_lm.Engine(str(bundle))
    try:
        start = [runner.bos_id] if runner.add_bos else []
        assert start + engine.tokenize(PROMPT) == runner.encode(PROMPT)
        with engine.create_session(apply_prompt_template=False, max_output_tokens=32,
                                   sampler_config=litert_lm.SamplerConfig(top_k=1)) as session:
            session.run_prefill([PROMPT])
            steps = [r.texts[0] for r in session.run_decode_async()]
    finally:
        engine.close()
    assert engine_steps_agreeing(steps, runner, ours) == len(ours) == 32, (steps, ours)


@pytest.mark.parametrize("preset, family", [("gemma3_270m", "gemma3"), ("gemma3_instruct_1b", "gemma3"),
                                            ("qwen3_0.6b_en", "qwen3"), ("qwen3_1.7b_en", "qwen3"),
                                            ("llama3.2_1b", "llama3"), ("llama3.2_3b", "llama3")])
def test_presets_carry_the_published_shapes(preset, family):
    """Each preset's architecture counts the weights KerasHub's own preset metadata states."""
    import keras_hub

    from llm_tflite.plugins.registry import presets

    registered = presets()[preset].item
    assert registered.family == family
    published = getattr(keras_hub.models, get_family(family).backbone_class).presets[preset]["metadata"]["params"]
    assert get_family(family).count_weights(registered.config) == published


def test_families_claim_their_sources():
    assert get_family("gemma3").owns("gemma3_instruct_1b") and get_family("qwen3").owns("qwen3_0.6b_en")
    assert get_family("llama3").owns("llama3.2_1b") and not get_family("llama3").owns("gemma3_1b")
    assert get_family("llama3").owns("kaggle://keras/llama3/keras/llama3.2_1b/1")


def test_offline_preset_without_random_weights_says_what_to_do(monkeypatch):
    from llm_tflite.errors import ModelSourceError

    import keras_hub

    def offline(*args, **kwargs):
        raise OSError("no network")  # what a download gives here, without trying one when online

    monkeypatch.setattr(keras_hub.models.Qwen3CausalLM, "from_preset", offline)
    with pytest.raises(ModelSourceError, match="--random-weights"):
        load_model("qwen3_0.6b_en")


def test_batched_decode_rows_equal_each_sequence_alone(tiny, tmp_path):
    """Gemma 3 (RoPE at each row's own position, local windows, soft-caps, query heads grouped by key
    head) in a ``decode_batch_2``: two rows at different positions, one crossing the batched windows 64
    and 96, give their logits alone, bit for bit."""
    lm, _ = tiny("gemma3")
    path = tmp_path / "gemma3_batched.tflite"
    Converter(context_length=128, prefill_lengths=(8, 32), batch_sizes=(2,)).convert(lm, str(path), family="gemma3")
    runner = InterpreterRunner(path, weight_cache="memory")
    ids = [int(i) for i in np.random.default_rng(3).integers(10, 4000, 60)]
    prompts = [ids[:5], ids[:50]]
    expected = []
    for prompt in prompts:
        sequence = runner.sequence()
        logits = [sequence.feed(prompt)[-1]]
        for _ in range(24):
            logits.append(sequence.feed([int(logits[-1].argmax())])[-1])
        expected.append(logits)
    sequences = [runner.sequence() for _ in prompts]
    logits = [s.feed(p)[-1] for s, p in zip(sequences, prompts)]
    pad = runner.engine.new_state()
    for step in range(24):
        for row in range(2):
            np.testing.assert_array_equal(logits[row], expected[row][step])
        logits = list(runner.engine.decode_rows([s.caches for s in sequences], [int(l.argmax()) for l in logits],
                                                [s.position for s in sequences], pad))
        for sequence in sequences:
            sequence.position += 1
    assert sequences[1].position > 64


def test_ring_cache_options_are_checked_and_context_shaped_rings_fill_whole_rows():
    from llm_tflite.errors import InvalidArgumentError
    from llm_tflite.families.base import KVCacheSpec
    from llm_tflite.litert.metadata import stored_cache_shape

    with pytest.raises(InvalidArgumentError, match="ring_caches must be True, False or 'litertlm'"):
        Converter(ring_caches="yes")
    with pytest.raises(InvalidArgumentError, match="LiteRT-LM cannot run --kv-cache int8"):
        Converter(ring_caches="litertlm", kv_cache="int8")
    # a 1,000-token context, 1 head of 256: rings round up to a multiple of 1000 / gcd(1000, 256) = 125 slots
    spec = KVCacheSpec(num_layers=3, num_kv_heads=1, head_dim=256, sliding_windows=(512, None, 900))
    assert spec.cache_lengths(1000, 128, True, 125) == [750, 1000, 1000]
    assert spec.cache_lengths(1000, 128, True) == [640, 1000, 1000]
    assert stored_cache_shape([1, 1, 750, 256], 1000, True) == [1, 1, 1000, 192]
    assert stored_cache_shape([1, 1, 750, 256], 1000, False) == [1, 1, 750, 256]
    assert stored_cache_shape([1, 1, 1000, 256], 1000, True) == [1, 1, 1000, 256]
    with pytest.raises(ModelFileError, match="cannot be stored"):
        stored_cache_shape([1, 1, 640, 256], 1000, True)  # 163,840 values are not rows of 1,000


def test_a_bundle_keeps_a_ring_only_where_it_halves_the_cache(tiny, tmp_path):
    """Stored context-shaped, a ring costs two copies a call (the graph's reshapes): at a 96-token context
    a 56-slot ring would not halve the cache, so a bundle keeps the naive layout there."""
    lm, _ = tiny("gemma3")
    path = tmp_path / "short.tflite"
    Converter(context_length=96, prefill_lengths=(8, 32), ring_caches="litertlm").convert(lm, str(path), family="gemma3")
    record = read_metadata(path)
    assert record["kv_cache"]["lengths"] == [96] * 6 and "rings_as_context" not in record["kv_cache"]
    assert record["format"] == 5


@pytest.mark.parametrize("rings", [True, "litertlm"])
def test_gemma3_local_layers_keep_only_their_window(tiny, tmp_path, rings):
    """Gemma 3's local layers (window 24) keep 24 + 32 slots (window plus the longest chunk) instead of
    the context of 128 (``families.ops.Ring``), and give the naive layout's logits: past several
    wraps of the ring, through prefill, score and decode signatures, decode windows and padded chunks.
    ``"litertlm"``: the rings stored in buffers of the context's length (what LiteRT-LM 0.18 can run)."""
    lm, _ = tiny("gemma3")
    ring_path, naive_path = tmp_path / "ring.tflite", tmp_path / "naive.tflite"
    for path, ring in ((ring_path, rings), (naive_path, False)):  # a decode window (32) shorter than a ring (56)
        Converter(context_length=128, prefill_lengths=(8, 32), decode_windows=(32,), ring_caches=ring).convert(
            lm, str(path), family="gemma3")
    record = read_metadata(ring_path)
    assert record["kv_cache"]["sliding_windows"] == [24] * 5 + [None]
    assert record["kv_cache"]["lengths"] == [56] * 5 + [128]
    assert record["kv_cache"].get("rings_as_context", False) == (rings == "litertlm")
    assert record["format"] == (6 if rings == "litertlm" else 5)
    if rings == "litertlm":  # a record claiming it where it cannot hold is refused
        from llm_tflite.litert.metadata import validate_record

        for bad in ({"kv_cache": {**record["kv_cache"], "rings_as_context": "false"}}, {"format": 5},
                    {"kv_cache_layout": "transposed"},
                    {"kv_cache": {**record["kv_cache"], "lengths": [128] * 6}},
                    {"kv_cache": {**record["kv_cache"], "dtype": "int8"}}):
            with pytest.raises(ModelFileError, match="rings_as_context"):
                validate_record({**record, **bad}, "f")
    stored = [1, 1, 128, 2 * 56 * 64 // 128] if rings == "litertlm" else [1, 2, 56, 64]  # 2 heads x 56 slots x 64
    details = InterpreterRunner(ring_path).engine.input_details
    assert all(list(details[name]["kv_cache_k_0"]["shape"]) == stored for name in ("decode", "prefill_32"))
    assert list(details["decode"]["kv_cache_v_5"]["shape"]) == [1, 2, 128, 64]
    assert read_metadata(naive_path)["kv_cache"]["lengths"] == [128] * 6
    ring, naive = InterpreterRunner(ring_path), InterpreterRunner(naive_path)
    used = []
    ring.engine.call = lambda name, inputs, call=ring.engine.call: used.append(name) or call(name, inputs)
    specs = ring.engine.cache_specs
    assert specs["kv_cache_k_0"][0] == (1, 2, 56, 64) and specs["kv_cache_v_4"][0] == (1, 2, 56, 64)
    assert specs["kv_cache_k_5"][0] == (1, 2, 128, 64)
    # what a call attending over W slots reads (bench, batching): W of each cache, or a ring whole
    slot = 2 * 2 * 64 * 4  # a key and a value slot: 2 heads x 64 dims of float32
    assert ring.engine.cache_bytes(None) == slot * (5 * 56 + 128)
    assert ring.engine.cache_bytes(32) == slot * 6 * 32
    assert ring.engine.cache_bytes(64) == slot * (5 * 56 + 64) and naive.engine.cache_bytes(64) == slot * 6 * 64
    assert sum(np.prod(s) for s, _ in specs.values()) / sum(np.prod(s) for s, _ in naive.engine.cache_specs.values()) \
        == (5 * 56 + 128) / (6 * 128)
    ids = [int(i) for i in np.random.default_rng(11).integers(10, 4000, 126)]
    for chunks in ([100, 26], [1, 4, 37, 1, 1, 3, 50, 29]):  # 32-token chunks, padded ones, single tokens
        a, b = ring.sequence(), naive.sequence()
        at = 0
        for size in chunks:
            np.testing.assert_allclose(a.feed(ids[at : at + size]), b.feed(ids[at : at + size]), rtol=0, atol=1e-5)
            at += size
    # generation: prompts through prefill signatures without logits, then decode steps
    prompt = ids[:73]  # 72 through prefill_8 + 2 x prefill_32 (the cheapest plan), the last through decode
    assert list(ring.generate_ids(prompt, 30, stop_token_ids=[])) == list(naive.generate_ids(prompt, 30,
                                                                                              stop_token_ids=[]))
    assert {"decode_window_32", "decode", "score_32", "prefill_32", "prefill_8"} <= set(used)


def test_gemma3_int8_caches_in_rings_keep_each_slot_to_half_a_step(tiny, tmp_path):
    """int8 caches (kv_cache="int8") in Gemma 3's rings: after 110 tokens (the 56-slot rings wrapped
    twice, through padded prefill chunks, a decode window and decode steps) the first layer's slots are
    the float32 ring file's to half a step, and the logits stay within 3 % (RMS, of their spread)."""
    from conftest import assert_int8_caches_within_half_a_step

    lm, _ = tiny("gemma3")
    paths = {kv: tmp_path / f"{kv}.tflite" for kv in ("float32", "int8")}
    for kv, path in paths.items():
        Converter(context_length=128, prefill_lengths=(8, 32), decode_windows=(32,), kv_cache=kv).convert(
            lm, str(path), family="gemma3")
    full, small = InterpreterRunner(paths["float32"]), InterpreterRunner(paths["int8"])
    assert small.engine.cache_specs["kv_cache_k_0"] == ((1, 2, 56, 64), np.dtype("int8"))
    assert small.engine.cache_specs["kv_cache_k_5_scale"] == ((1, 2, 128, 1), np.dtype("float32"))
    ids = [int(i) for i in np.random.default_rng(5).integers(10, 4000, 110)]
    a, b = full.sequence(), small.sequence()
    for at, size in ((0, 3), (3, 1), (4, 45), (49, 1), (50, 60)):
        want, got = a.feed(ids[at : at + size]), b.feed(ids[at : at + size])
        error = np.sqrt(np.mean((got - want) ** 2)) / want.std()
        assert error <= 0.03 and np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9, (at, error)  # measured 1.1-1.6 %
    assert_int8_caches_within_half_a_step(small.engine.read_state(b.caches), full.engine.read_state(a.caches), 56)


def _constant_arithmetic(data: bytes) -> int:
    """ADD / SUB / MUL ops whose inputs are all constants, over every signature of a packed file."""
    from llm_tflite.litert.flatbuffer import tflite_schema

    schema = tflite_schema()
    model, count = schema.Model.GetRootAs(data, 0), 0
    arithmetic = {schema.BuiltinOperator.ADD, schema.BuiltinOperator.SUB, schema.BuiltinOperator.MUL}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in arithmetic and all(
                    model.Buffers(subgraph.Tensors(op.Inputs(j)).Buffer()).DataLength() for j in range(op.InputsLength())):
                count += 1
    return count


def test_gemma_norm_scales_are_added_once_when_binding_not_at_every_step(tiny, tmp_path, monkeypatch):
    """Gemma's RMS norms scale by ``1 + scale``: with the weights as the graph's inputs, TensorFlow could not
    fold that ADD, so every call ran it (109 ops a decode step for Gemma 3 270M). Binding computes it once;
    every signature's outputs are bit for bit the same as with the ops left in."""
    from llm_tflite.litert import bind

    lm, _ = tiny("gemma3")
    folded, kept = tmp_path / "folded.tflite", tmp_path / "kept.tflite"
    Converter(context_length=64, prefill_lengths=(8,)).convert(lm, str(folded), family="gemma3")
    monkeypatch.setattr(bind, "_fold_constant_arithmetic", lambda *args: None)
    Converter(context_length=64, prefill_lengths=(8,)).convert(lm, str(kept), family="gemma3")
    assert _constant_arithmetic(folded.read_bytes()) == 0
    assert _constant_arithmetic(kept.read_bytes()) >= 4 * TINY["gemma3"]["num_layers"]  # per signature, per norm
    assert "decode" in assert_signatures_compute_the_same(folded.read_bytes(), kept.read_bytes())


def test_rope_with_the_layers_tables_equals_the_layer_bit_for_bit():
    """``keras_rope`` rotates with the layer's own cos/sin tables and one concatenation (fewer ops than the
    layer's call): the same values, bit for bit, for linear, scaled, YaRN and Llama 3 layers, positions
    of one row or a batch; anything else (numpy input) runs the layer itself."""
    import collections

    import tensorflow as tf
    from keras_hub.src.layers.modeling.rotary_embedding import RotaryEmbedding
    from keras_hub.src.models.llama.llama_rotary_embedding import LlamaRotaryEmbedding

    from llm_tflite.families.decoder import keras_rope

    rng = np.random.default_rng(0)
    layers = [RotaryEmbedding(max_wavelength=10000), RotaryEmbedding(max_wavelength=1_000_000, scaling_factor=8.0),
              RotaryEmbedding(rope_type="yarn", scaling_factor=4.0, truncate=True, original_max_position_embeddings=64),
              LlamaRotaryEmbedding(max_wavelength=500000, frequency_adjustment_factor=32.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, pretraining_sequence_length=8192)]
    x = rng.standard_normal((1, 7, 4, 64)).astype(np.float32)
    for layer in layers:
        rope = keras_rope(layer)
        for positions in (tf.constant([3, 4, 5, 6, 7, 8, 900]), tf.constant([[0, 1, 2, 3, 4, 5, 6]])):
            expected = layer(tf.constant(x), positions=positions).numpy()
            assert np.array_equal(rope(tf.constant(x), positions).numpy(), expected), (layer.rope_type, positions)
        assert np.array_equal(np.asarray(rope(x, tf.constant([0, 1, 2, 3, 4, 5, 6]))),
                              layer(x, positions=tf.constant([0, 1, 2, 3, 4, 5, 6])).numpy())
    # the fewer ops: the rotation's negation and stack are gone (the tables' own ops stay)
    spec = (tf.TensorSpec([1, 7, 4, 64]), tf.TensorSpec([7], tf.int32))
    ours, theirs = (collections.Counter(op.type for op in tf.function(f).get_concrete_function(*spec).graph
                                        .get_operations())
                    for f in (keras_rope(layers[0]), lambda x, p: layers[0](x, positions=p)))
    assert (ours["Neg"], ours["Pack"]) == (theirs["Neg"] - 1, theirs["Pack"] - 1)
    assert sum(ours.values()) < sum(theirs.values())
