"""``prefill_decode`` conversion with the weights bound after the graph is converted
(``llm_tflite.litert.bind``): the same model as freezing them into the graph, in each format."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import assert_same_as_ai_edge_quantizer, shakespeare_text
from llm_tflite import Converter, InterpreterRunner, QuantizationStrategy
from llm_tflite.errors import ConversionError
from llm_tflite.export.converter import binds_weights
from llm_tflite.litert import flatbuffer
from llm_tflite.litert.bind import bind_weights
from llm_tflite.litert.rewrite import _load
from llm_tflite.quantize.base import Quantizer


class FrozenFloat(QuantizationStrategy):
    """A strategy that only sets converter options: conversion freezes the weights for it."""

    name = "test_frozen_float"

    def configure(self, converter, calibration=None):
        pass


def _convert(source, path, quantize, **kwargs):
    Converter(quantize=quantize, prefill_lengths=(4, 16), decode_windows=(32,), **kwargs).convert(source, str(path))
    return path


@pytest.fixture(scope="module", params=["tiny_gpt2_dir", "tiny_palm_dir"])
def files(request, tmp_path_factory):
    source = str(request.getfixturevalue(request.param))
    directory = tmp_path_factory.mktemp("bind")
    return {
        "frozen": _convert(source, directory / "frozen.tflite", FrozenFloat()),
        **{name: _convert(source, directory / f"{name}.tflite", name)
           for name in ("none", "dynamic_int8", "float16", "int4_blockwise")},
    }


def _logits(path):
    runner = InterpreterRunner(path, weight_cache="memory")
    ids = runner.encode(shakespeare_text()[:400])[:60]
    return runner.logits(ids)


def test_which_strategies_bind():
    assert binds_weights(Quantizer("none").strategy) and binds_weights(Quantizer("dynamic_int8").strategy)
    assert binds_weights(Quantizer("float16").strategy) and binds_weights(Quantizer("int4_blockwise").strategy)
    assert not binds_weights(FrozenFloat())


def test_bound_float32_is_the_frozen_model(files):
    bound, frozen = _logits(files["none"]), _logits(files["frozen"])
    assert np.abs(bound - frozen).max() <= 1e-4 * max(1.0, np.abs(frozen).max())
    runner, reference = InterpreterRunner(files["none"]), InterpreterRunner(files["frozen"])
    assert runner.complete("ROMEO:", max_new_tokens=40).token_ids == \
        reference.complete("ROMEO:", max_new_tokens=40).token_ids


def test_bound_int4_is_ai_edge_quantizers_file(files):
    """int4 weights are bound straight into the graph (no float32 file is built for a 1B model) in
    exactly the form ai-edge-quantizer gives the float32 file: values, scales, layout, logits."""
    assert_same_as_ai_edge_quantizer(files["int4_blockwise"], files["none"], "int4_blockwise")


def _matmul_graph(inputs: int, outputs: int) -> bytes:
    """A one-op graph ``y = x @ weight_0`` with the weight as an input."""
    import tensorflow as tf

    from llm_tflite.litert.rewrite import merge_signatures

    @tf.function(input_signature=[tf.TensorSpec([1, inputs], tf.float32, name="x"),
                                  tf.TensorSpec([inputs, outputs], tf.float32, name="weight_0")])
    def matmul(x, w):
        return {"y": tf.matmul(x, w)}

    graph = tf.lite.TFLiteConverter.from_concrete_functions([matmul.get_concrete_function()]).convert()
    return merge_signatures({"run": (graph, ["x", "weight_0"], ["y"])})


def test_int4_weights_too_narrow_for_a_block_fail_clearly():
    with pytest.raises(ConversionError, match=r"weight 0 \(8x40\): width 40 is not divisible by block size 32.*"
                                              "multiple of the block size; use an int8 strategy"):
        bind_weights(_matmul_graph(40, 8), [lambda: np.ones((40, 8), np.float32)], "int4_blockwise_32")
    with pytest.raises(ConversionError, match=r"width 96 is not divisible by block size 128.*"
                                              "use int4_blockwise .blocks of 32. or an int8 strategy"):
        bind_weights(_matmul_graph(96, 8), [lambda: np.ones((96, 8), np.float32)], "int4_blockwise_128")
    bound = bind_weights(_matmul_graph(64, 8), [lambda: np.ones((64, 8), np.float32)], "int4_blockwise_32")
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=bound).get_signature_runner("run")
    import ml_dtypes

    zeros = bind_weights(_matmul_graph(64, 8), [lambda: np.zeros((64, 8), np.float32)], "int4_blockwise_32")
    assert Interpreter(model_content=zeros).get_signature_runner("run")(
        x=np.ones((1, 64), np.float32))["y"].tolist() == [[0.0] * 8]  # all-zero blocks: values 0 (scale 0 would not load)
    scale = float(np.float32(1 / 7).astype(ml_dtypes.bfloat16))  # max/7, rounded to 8 mantissa bits
    assert runner(x=np.ones((1, 64), np.float32))["y"] == pytest.approx(np.full((1, 8), 64 * 7 * scale), rel=1e-5)


def _structure(path):
    schema, model = _load(path.read_bytes())
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            ops.append((names[max(code.builtinCode, code.deprecatedBuiltinCode)], subgraph, op))
    return schema, model, ops


def _constant(model, subgraph, index):
    data = model.buffers[subgraph.tensors[index].buffer].data
    return data is not None and len(data) > 0


def test_weights_are_constants_of_the_ops_that_use_them(files):
    schema, model, ops = _structure(files["none"])
    for signature in model.signatureDefs:  # no weight inputs left
        assert all(not entry.name.decode().startswith("weight_") for entry in signature.inputs)
    for name, subgraph, op in ops:
        if name in ("RESHAPE", "TRANSPOSE"):  # nothing left to fold: they move activations
            assert not _constant(model, subgraph, op.inputs[0])
        if name == "BATCH_MATMUL":  # a matmul by a weight became FULLY_CONNECTED
            assert not _constant(model, subgraph, op.inputs[1])
    assert sum(name == "FULLY_CONNECTED" for name, _, _ in ops) > len(model.subgraphs)


def test_no_unreferenced_buffers_and_biases_fused(files):
    for name in ("none", "dynamic_int8", "float16"):
        schema, model, ops = _structure(files[name])
        referenced = {0} | {t.buffer for sg in model.subgraphs for t in sg.tensors} | {m.buffer for m in model.metadata}
        assert referenced == set(range(len(model.buffers)))  # LiteRT's loader read weights' pages otherwise
    schema, model, ops = _structure(files["none"])
    for name, subgraph, op in ops:
        if name != "ADD":
            continue
        producers = {o: (n, p) for n, s, p in ops if s is subgraph for o in p.outputs}
        for i, j in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
            # an FC output plus a constant of its width is a bias the FC should carry
            if producers.get(i, (None,))[0] == "FULLY_CONNECTED" and _constant(model, subgraph, j):
                width = int(subgraph.tensors[i].shape[-1])
                assert int(np.prod(subgraph.tensors[j].shape)) != width, "bias ADD not fused"


def test_dynamic_int8_is_hybrid_with_one_tied_table(files):
    schema, model, ops = _structure(files["dynamic_int8"])
    fully_connected = [(s, op) for name, s, op in ops if name == "FULLY_CONNECTED"]
    from llm_tflite.litert.bind import MIN_QUANTIZED_ELEMENTS

    for subgraph, op in fully_connected:
        weight = subgraph.tensors[op.inputs[1]]
        if np.prod(weight.shape) < MIN_QUANTIZED_ELEMENTS:  # small weights stay float, as TensorFlow keeps them
            assert weight.type == schema.TensorType.FLOAT32
            continue
        assert weight.type == schema.TensorType.INT8
        assert len(weight.quantization.scale) == weight.shape[0]  # a scale per output channel
        assert op.builtinOptions.asymmetricQuantizeInputs
    lookups = [(s, op) for name, s, op in ops if name == "EMBEDDING_LOOKUP"]
    assert lookups
    heads = {s.tensors[op.inputs[1]].buffer for s, op in fully_connected}
    assert any(s.tensors[op.inputs[1]].buffer in heads for s, op in lookups)  # the tied table, stored once
    bound, reference = _logits(files["dynamic_int8"]), _logits(files["none"])
    assert np.abs(bound - reference).max() / reference.std() < 0.1
    assert (bound.argmax(-1) == reference.argmax(-1)).mean() > 0.9


def test_float16_weights_behind_dequantize(files):
    schema, model, ops = _structure(files["float16"])
    dequantized = [s.tensors[op.inputs[0]] for name, s, op in ops if name == "DEQUANTIZE"]
    assert dequantized and all(t.type == schema.TensorType.FLOAT16 for t in dequantized)
    assert flatbuffer.weight_bytes(files["float16"].read_bytes()) < 0.6 * flatbuffer.weight_bytes(
        files["none"].read_bytes())
    bound, reference = _logits(files["float16"]), _logits(files["none"])
    assert np.abs(bound - reference).max() < 0.01 * max(1.0, np.abs(reference).max())


def test_float16_constants_expand_only_into_fully_connected_weights(files):
    """XNNPACK packs a float16 matrix read only as a FULLY_CONNECTED weight once for every
    signature; any other reader of a constant's DEQUANTIZE makes the runtime expand it to float32
    once per signature (a tied GPT-2 table: 154 MB each). Embedding tables are gathered as float16
    and only the rows are dequantized."""
    schema, model, ops = _structure(files["float16"])
    gathers = 0
    for name, subgraph, op in ops:
        if name == "GATHER" and len(subgraph.tensors[op.inputs[0]].shape) == 2:
            gathers += 1
            assert subgraph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT16
            assert _constant(model, subgraph, op.inputs[0])
        if name == "DEQUANTIZE" and _constant(model, subgraph, op.inputs[0]):
            readers = [(n, op2.inputs.tolist().index(op.outputs[0])) for n, s, op2 in ops
                       if s is subgraph and op.outputs[0] in list(op2.inputs)]
            assert readers and all(reader == ("FULLY_CONNECTED", 1) for reader in readers), readers
        if name == "FULLY_CONNECTED" and _constant(model, subgraph, op.inputs[1]):
            assert np.prod(subgraph.tensors[op.inputs[1]].shape) < 1024  # matrices are stored float16
    assert gathers >= len(model.subgraphs)  # every signature embeds its tokens


def test_wrong_weight_count_is_a_conversion_error(files):

    import tensorflow as tf  # a one-op graph with one weight input

    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32, name="x"), tf.TensorSpec([2], tf.float32, name="weight_0")])
    def add(x, w):
        return {"y": x + w}

    from llm_tflite.litert.rewrite import merge_signatures

    graph = tf.lite.TFLiteConverter.from_concrete_functions([add.get_concrete_function()]).convert()
    graph = merge_signatures({"run": (graph, ["x", "weight_0"], ["y"])})
    with pytest.raises(ConversionError, match="takes 1 weights, 2 were given"):
        bind_weights(graph, [lambda: np.ones(2, np.float32)] * 2)
    bound = bind_weights(graph, [lambda: np.array([1.0, 2.0], np.float32)])
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=bound).get_signature_runner("run")
    assert runner(x=np.array([10.0, 20.0], np.float32))["y"].tolist() == [11.0, 22.0]


@pytest.mark.parametrize("source", ["tiny_gpt2_dir", "tiny_palm_dir"])
def test_signatures_convert_unfrozen_to_the_same_bytes(request, source, monkeypatch):
    """Weight-input graphs skip freezing (whose Grappler pass allocates every weight-shaped
    placeholder: a second copy of the weights per signature) and convert to the same bytes."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    from llm_tflite import load_model
    from llm_tflite.export.converter import skip_freezing
    from llm_tflite.export.prefill_decode import model_variables, signature_function

    family, lm = load_model(str(request.getfixturevalue(source)))
    weights = model_variables(lm)
    fn = signature_function(family, lm, family.kv_cache_spec(lm), 32, 4, False, None, weights)

    def convert(unfrozen, function=fn):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
        converter._experimental_disable_fuse_mul_and_fc = True
        if unfrozen:
            skip_freezing(converter, function, tf)
        return converter.convert()

    frozen = convert(False)
    freezes = []
    real = convert_to_constants.convert_variables_to_constants_v2_as_graph
    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2_as_graph",
                        lambda *a, **k: freezes.append(1) or real(*a, **k))
    assert convert(True) == frozen
    assert not freezes
    # the converter converts a signature from its GraphDef (traced before the model is let go) to the same bytes
    from llm_tflite.export.converter import _function_of, _graph_of

    assert convert(True, _function_of(_graph_of(fn, tf), tf)) == frozen


@pytest.mark.parametrize("strategy", ["none", "dynamic_int8"])
def test_a_model_loaded_for_conversion_is_let_go_before_binding(tiny_gpt2_dir, tmp_path, monkeypatch, strategy):
    """The conversion loads the model, traces the graph, writes the weights beside the output and lets
    the Keras model go; the graphs are then converted and the weights bound from the mapped files: the
    conversion holds the file being built and one weight, not the float32 model beside them. Same bytes as binding from memory,
    and nothing is left beside the output."""
    import gc
    import os
    import weakref

    from llm_tflite.export import converter as converter_module

    loaded, alive_at_binding = [], []
    load = converter_module.load_model

    def load_and_watch(*args, **kwargs):
        fam, lm = load(*args, **kwargs)
        loaded.append((weakref.ref(lm), weakref.ref(lm.weights[0].value)))  # the model, a TensorFlow variable
        return fam, lm

    bind, converted, alive_at_converting = converter_module._Binding.bind, converter_module.Converter._converted, []

    def bind_and_check(self):
        gc.collect()
        alive_at_binding.append([ref() is not None for ref in loaded[-1]])
        return bind(self)

    def convert_and_check(self, *args):  # TensorFlow's converter keeps memory: it runs once the model went
        gc.collect()
        alive_at_converting.append(loaded[-1][0]() is not None)
        return converted(self, *args)

    monkeypatch.setattr(converter_module, "load_model", load_and_watch)
    monkeypatch.setattr(converter_module._Binding, "bind", bind_and_check)
    monkeypatch.setattr(converter_module.Converter, "_converted", convert_and_check)
    spilled = _convert(str(tiny_gpt2_dir), tmp_path / "spilled" / "model.tflite", strategy)
    assert alive_at_binding == [[False, False]] and os.listdir(tmp_path / "spilled") == ["model.tflite"]
    assert len(alive_at_converting) > 5 and not any(alive_at_converting)
    monkeypatch.setattr(converter_module._Binding, "spill", lambda *args: None)
    in_memory = _convert(str(tiny_gpt2_dir), tmp_path / "in_memory.tflite", strategy)
    assert alive_at_binding[1] == [False, True]  # bound from the variables themselves
    assert spilled.read_bytes() == in_memory.read_bytes()


def test_a_signature_that_fails_to_convert_is_a_conversion_error_naming_it(tiny_gpt2_dir, tmp_path, monkeypatch):
    """The traced graphs convert after the model is let go, outside the tracing's error handling: a failure
    there (rebuilding a graph, a non-builtin op) is still a ``ConversionError`` that names what failed,
    raised at the first bad signature, and nothing is left beside the output."""
    from llm_tflite.export import converter as converter_module

    def broken(graph, tf):
        raise ValueError("the graph has no tensor 'tokens:0'")

    monkeypatch.setattr(converter_module, "_function_of", broken)
    with pytest.raises(ConversionError, match=r"converting signature 'prefill_4' failed: ValueError: the graph has no"):
        _convert(str(tiny_gpt2_dir), tmp_path / "a" / "model.tflite", "dynamic_int8")
    assert os.listdir(tmp_path / "a") == []
    monkeypatch.undo()

    calls = []
    converted = converter_module.Converter._converted
    monkeypatch.setattr(converter_module.Converter, "_converted",
                        lambda self, *args: calls.append(1) or converted(self, *args))
    monkeypatch.setattr(converter_module, "non_builtin_ops", lambda data: {"FlexStringSplit"})
    with pytest.raises(ConversionError, match=r"needs non-builtin ops \['FlexStringSplit'\]"):
        _convert(str(tiny_gpt2_dir), tmp_path / "b" / "model.tflite", "dynamic_int8")
    assert calls == [1] and os.listdir(tmp_path / "b") == []
