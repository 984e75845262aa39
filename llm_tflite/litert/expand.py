"""Weights stored behind a constant ``DEQUANTIZE``, expanded to float32 once for every signature.

``weight_only_int8`` files (and ``float16`` files from before llm-tflite bound their embedding
tables as float16) keep weights as int8 or float16 constants that a ``DEQUANTIZE`` turns into
float32. LiteRT's XNNPACK delegate unpacks each such constant into a float32 buffer of its own
*for every signature* that reads it, and keeps them: GPT-2 124M ``weight_only_int8`` (128 MB,
seven signatures) peaked at 4.6 GB in ``generate``. The one exception is a float16 matrix read
only as a ``FULLY_CONNECTED`` weight, which XNNPACK packs straight from the file.

``expand_dequantized`` folds the other ``DEQUANTIZE`` ops into float32 constants, one buffer
per stored weight shared by every signature, so XNNPACK packs each once (its weight cache
shares the packed copy) and the file's pages are mapped like any float32 model's. The values
are exactly what the runtime's ``DEQUANTIZE`` computes: ``scale * (q - zero_point)``, per
channel along ``quantized_dimension``, rounded once to float32.
"""

from __future__ import annotations

import numpy as np

from llm_tflite.errors import ModelFileError
from llm_tflite.litert.flatbuffer import (builtin_code, drop_unused_buffers, drop_unused_tensors, tflite_schema,
                                         unpack_model)


def _expands(float16: bool, readers, fully_connected) -> bool:
    """Whether the runtime would expand a constant DEQUANTIZE (of a float16 constant, or not) read
    by ``readers`` (``(operator code, input slot)`` pairs) once per signature."""
    return not float16 or any(code != fully_connected or slot != 1 for code, slot in readers)


def expansion_bytes(buf, where: str = "this file") -> int:
    """Bytes of float32 weights ``expand_dequantized`` would add to the flatbuffer ``buf`` (0: the
    file has no constant ``DEQUANTIZE`` the runtime expands per signature; load it as it is).
    Reads the tables only."""
    schema = tflite_schema()
    try:
        model = schema.Model.GetRootAs(buf, 0)
        codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
                 for i in range(model.OperatorCodesLength())]
        ops = schema.BuiltinOperator
        if ops.DEQUANTIZE not in codes:
            return 0
        added: dict[int, int] = {}  # stored weight's buffer -> float32 bytes
        for g in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(g)
            operators = [subgraph.Operators(i) for i in range(subgraph.OperatorsLength())]
            readers: dict[int, list[tuple]] = {}
            for op in operators:
                for slot in range(op.InputsLength()):
                    readers.setdefault(op.Inputs(slot), []).append((codes[op.OpcodeIndex()], slot))
            for op in operators:
                if codes[op.OpcodeIndex()] != ops.DEQUANTIZE or op.InputsLength() != 1 or op.OutputsLength() != 1:
                    continue
                if not 0 <= op.Inputs(0) < subgraph.TensorsLength():
                    raise IndexError(f"DEQUANTIZE reads tensor {op.Inputs(0)}")
                source = subgraph.Tensors(op.Inputs(0))
                buffer = model.Buffers(source.Buffer())
                if not (buffer.DataLength() or buffer.Size()):
                    continue  # not a constant: activations being dequantized
                if _expands(source.Type() == schema.TensorType.FLOAT16, readers.get(op.Outputs(0), []),
                            ops.FULLY_CONNECTED):
                    added[source.Buffer()] = 4 * int(np.prod(source.ShapeAsNumpy(), dtype=np.int64))
    except (IndexError, ValueError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{where} is a corrupt TensorFlow Lite file ({type(e).__name__}: {e}); "
                             "re-convert it") from e
    return sum(added.values())


def _dequantize(schema, tensor, data: np.ndarray) -> np.ndarray:
    shape = [int(d) for d in tensor.shape]
    itemsize = {schema.TensorType.FLOAT16: 2, schema.TensorType.INT8: 1}.get(tensor.type, 0)
    if data.size != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise ModelFileError(f"{tensor.name!r} holds {data.size} bytes for shape {shape}; the file is damaged, "
                             "re-convert it")
    if tensor.type == schema.TensorType.FLOAT16:
        return data.view(np.float16).astype(np.float32).reshape(shape)
    if tensor.type != schema.TensorType.INT8:
        raise ModelFileError(f"a constant DEQUANTIZE of {tensor.name!r} reads type {tensor.type}, which llm-tflite "
                             "cannot expand (int8 and float16 only); re-convert the model")
    q = tensor.quantization
    scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
    zero = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [0] * len(scale), np.float32)
    values = data.view(np.int8).astype(np.float32).reshape(shape)
    if len(scale) == 0 or len(zero) != len(scale):
        raise ModelFileError(f"{tensor.name!r} is int8 with {len(scale)} scales and {len(zero)} zero points; "
                             "the file is damaged, re-convert it")
    if len(scale) == 1:
        return (values - zero[0]) * scale[0]
    axis = int(q.quantizedDimension)
    if not (0 <= axis < len(shape)) or shape[axis] != len(scale):
        raise ModelFileError(f"{tensor.name!r} has {len(scale)} scales for shape {shape} along axis {axis}; "
                             "the file is damaged, re-convert it")
    broadcast = [1] * len(shape)
    broadcast[axis] = len(scale)
    return (values - zero.reshape(broadcast)) * scale.reshape(broadcast)


def expand_dequantized(buf):
    """The ``ModelT`` of ``buf`` with every constant ``DEQUANTIZE`` the runtime would expand per
    signature folded into a float32 constant (one buffer per stored weight). ``buf`` is a file
    ``expansion_bytes`` accepted; ``ModelFileError`` if a weight does not match its shape."""

    schema = tflite_schema()
    model = unpack_model(buf)
    ops = schema.BuiltinOperator
    codes = [builtin_code(code) for code in model.operatorCodes]
    expanded: dict[int, int] = {}  # stored weight's buffer -> its float32 buffer
    for index, subgraph in enumerate(model.subgraphs):
        readers: dict[int, list[tuple]] = {}
        for op in subgraph.operators:
            for slot, i in enumerate(op.inputs):
                readers.setdefault(int(i), []).append((codes[op.opcodeIndex], slot))
        kept = []
        for op in subgraph.operators:
            source = subgraph.tensors[op.inputs[0]] if codes[op.opcodeIndex] == ops.DEQUANTIZE and len(op.inputs) == 1 else None
            data = model.buffers[source.buffer].data if source is not None and source.buffer else None
            if data is None or len(data) == 0 or not _expands(
                    source.type == schema.TensorType.FLOAT16, readers.get(int(op.outputs[0]), []), ops.FULLY_CONNECTED):
                kept.append(op)
                continue
            if source.buffer not in expanded:
                buffer = schema.BufferT()
                buffer.data = np.ascontiguousarray(_dequantize(schema, source, np.asarray(data))).reshape(-1).view(np.uint8)
                model.buffers.append(buffer)
                expanded[source.buffer] = len(model.buffers) - 1
            out = subgraph.tensors[op.outputs[0]]
            out.buffer, out.quantization, out.type = expanded[source.buffer], None, schema.TensorType.FLOAT32
        subgraph.operators = kept
        drop_unused_tensors(model, index)  # the stored weights
    drop_unused_buffers(model)
    return model
