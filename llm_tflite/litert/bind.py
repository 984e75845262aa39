"""Binding weights into a converted graph: the converter never sees them.

TensorFlow's converter holds many copies of every constant it converts (GPT-2 124M: 11.6 GiB
for one signature, about 23x its float32 weights), which puts a 1.5B model out of reach of any
machine we run on. So ``prefill_decode`` signatures are traced with the weights as *inputs*
(``weight_{i}``, llm_tflite.export.prefill_decode): the converter sees a graph of a few
kilobytes and takes a second. This module then makes those inputs constants again, one weight
at a time, in the format the quantization strategy asks for:

1. every op chain from a weight input through ``RESHAPE`` / ``TRANSPOSE`` is folded into the
   constant (computed with numpy, shared by every signature that does the same);
2. ``BATCH_MATMUL(x, W)`` with a constant 2-D ``W`` becomes ``FULLY_CONNECTED(x, Wᵀ)``, the op
   XNNPACK packs and caches (what the converter does for constant weights);
3. each weight is stored as float32, as float16 (matrices; a ``DEQUANTIZE`` turns them into
   float32 -- the rows an embedding ``GATHER`` read, or the whole matrix, which XNNPACK packs
   once for every signature when only ``FULLY_CONNECTED`` reads it), or ("int8") as int8
   with per-output-channel scales for ``FULLY_CONNECTED`` weights (hybrid ops that quantize
   their input on the fly: TensorFlow's dynamic-range quantization) and per-row scales for
   embedding tables read by ``EMBEDDING_LOOKUP`` -- a tied input/output embedding is one int8
   table for both -- or ("int4_blockwise_32" / "_128") as int4 in blocks of 32 or 128 inputs
   with a float16 scale each, for the same two ops: the layout ai-edge-quantizer writes and
   XNNPACK runs with dynamically quantized int8 activations (``_int4_blocks``). Binding int4
   directly, rather than quantizing a float32 file, means no float32 flatbuffer of the whole
   model is ever built: a model whose float32 file would pass the 2 GB flatbuffer limit
   converts, in the memory its int4 weights take.

Peak memory is the model's own weights, one weight being transformed, and the output.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from llm_tflite.errors import ConversionError
from llm_tflite.litert.flatbuffer import (builtin_code, drop_unused_buffers, drop_unused_tensors, has_scales,
                                         opcode_index, pack_into_bytearray, tflite_schema, unpack_model)

#: Formats ``bind_weights`` writes weights in.
FORMATS = ("float32", "float16", "int8", "int4_blockwise_32", "int4_blockwise_128")
#: Weights with fewer elements stay float32 (biases, norms), as TensorFlow's quantizer keeps them.
MIN_QUANTIZED_ELEMENTS = 1024
#: The int4 formats' threshold, as the int4 strategies set it for ai-edge-quantizer: tiny
#: constants (a [D/2, 1] outer-product factor) cannot form blocks.
MIN_INT4_ELEMENTS = 256
WEIGHT_PREFIX = "weight_"
#: FULLY_CONNECTED versions as TensorFlow's converter writes them: float with keep_num_dims (5),
#: hybrid int8 per-channel weights with asymmetrically quantized inputs (12).
FC_FLOAT_VERSION, FC_HYBRID_VERSION = 5, 12


@dataclasses.dataclass
class _Use:
    """One place a weight ends up: after ``steps`` (folded ops), as input ``slot`` of ``op``."""

    subgraph: object
    op: object
    slot: int
    steps: tuple  # ("reshape", shape) / ("transpose", perm), in order
    tensor: int  # the tensor the op reads (the last folded op's output, or the weight input)


class _Binder:
    def __init__(self, model):
        self.schema = tflite_schema()
        self.model = model
        self.ops = self.schema.BuiltinOperator
        self.buffers: dict[tuple, int] = {}  # (weight, steps, format) -> buffer index
        self.quantization: dict[tuple, object] = {}

    def name(self, op) -> int:
        return builtin_code(self.model.operatorCodes[op.opcodeIndex])

    def constant(self, subgraph, index: int) -> np.ndarray | None:
        tensor = subgraph.tensors[index]
        data = self.model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is None or len(data) == 0:
            return None
        dtype = {self.schema.TensorType.INT32: np.int32, self.schema.TensorType.INT64: np.int64}.get(tensor.type)
        return None if dtype is None else np.frombuffer(bytes(data), dtype)

    def uses(self, weight_inputs: dict[int, list[tuple]]) -> dict[int, list[_Use]]:
        """Follow each weight input through RESHAPE/TRANSPOSE to the op that computes with it."""
        found: dict[int, list[_Use]] = {}
        readers: dict[int, dict] = {}  # id(subgraph) -> tensor -> [(op, slot)]
        for weight, places in weight_inputs.items():
            for subgraph, tensor_index in places:
                consumers = readers.get(id(subgraph))
                if consumers is None:
                    consumers = readers[id(subgraph)] = {}
                    for op in subgraph.operators:
                        for slot, i in enumerate(op.inputs):
                            consumers.setdefault(i, []).append((op, slot))
                stack = [(tensor_index, ())]
                while stack:
                    index, steps = stack.pop()
                    for op, slot in consumers.get(index, []):
                        kind = self.name(op)
                        if kind == self.ops.RESHAPE and slot == 0:
                            shape = tuple(int(d) for d in subgraph.tensors[op.outputs[0]].shape)
                            stack.append((op.outputs[0], steps + (("reshape", shape),)))
                        elif kind == self.ops.TRANSPOSE and slot == 0 and self.constant(subgraph, op.inputs[1]) is not None:
                            perm = tuple(int(p) for p in self.constant(subgraph, op.inputs[1]))
                            stack.append((op.outputs[0], steps + (("transpose", perm),)))
                        else:
                            found.setdefault(weight, []).append(_Use(subgraph, op, slot, steps, index))
        return found

    def matmul_to_fully_connected(self, use: _Use) -> tuple:
        """``BATCH_MATMUL(x, W)`` with a 2-D constant ``W`` -> ``FULLY_CONNECTED(x, Wᵀ)``; the steps
        the weight now needs ([out, in] layout)."""
        op, subgraph = use.op, use.subgraph
        options = op.builtinOptions
        shape = [int(d) for d in subgraph.tensors[use.tensor].shape]
        if (self.name(op) != self.ops.BATCH_MATMUL or use.slot != 1 or len(shape) != 2
                or (options is not None and options.adjX)):
            return use.steps
        adj_y = bool(options is not None and options.adjY)
        op.opcodeIndex = opcode_index(self.schema, self.model, self.ops.FULLY_CONNECTED, version=FC_FLOAT_VERSION)
        fc = self.schema.FullyConnectedOptionsT()
        fc.keepNumDims = True
        op.builtinOptionsType = self.schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = fc
        op.inputs = [op.inputs[0], op.inputs[1], -1]
        return use.steps if adj_y else use.steps + (("transpose", (1, 0)),)

    def add_buffer(self, array: np.ndarray) -> int:
        buffer = self.schema.BufferT()
        buffer.data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.model.buffers.append(buffer)
        return len(self.model.buffers) - 1


def _tensor_types() -> dict:
    schema = tflite_schema()
    return {"float32": schema.TensorType.FLOAT32, "float16": schema.TensorType.FLOAT16, "int8": schema.TensorType.INT8,
            "int32": schema.TensorType.INT32, "int64": schema.TensorType.INT64, "uint32": schema.TensorType.UINT32,
            "bool": schema.TensorType.BOOL}


def _apply(array: np.ndarray, steps) -> np.ndarray:
    for kind, value in steps:
        array = array.reshape(value) if kind == "reshape" else np.transpose(array, value)
    return np.ascontiguousarray(array)


def _int8_rows(array: np.ndarray, block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per row (output channel): TensorFlow's dynamic-range scheme.

    Computed ``block_bytes`` of rows at a time, so a 2 GB embedding table needs its int8 copy
    beside it, not two float temporaries of its size."""
    rows = array.reshape(array.shape[0], -1)
    scale = np.empty(rows.shape[0], np.float32)
    values = np.empty(rows.shape, np.int8)
    step = max(1, block_bytes // max(1, rows.shape[1] * rows.itemsize))
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        block_scale = np.abs(block).max(axis=1) / 127.0
        block_scale = np.where(block_scale > 0, block_scale, 1.0).astype(np.float32)
        scale[start : start + step] = block_scale
        values[start : start + step] = np.clip(np.round(block / block_scale[:, None]), -127, 127).astype(np.int8)
    return values.reshape(array.shape), scale


def int4_block_size(fmt: str) -> int | None:
    """The block size of an ``int4_blockwise_{N}`` format, None for the others."""
    return int(fmt.rsplit("_", 1)[1]) if fmt.startswith("int4_blockwise_") else None


def _int4_blocks(array: np.ndarray, block: int, block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 in blocks of ``block`` along each row (the op's input channels), as
    ai-edge-quantizer's blockwise recipe computes it, so files are the same whichever wrote them:
    ``scale = max|block| / 7`` rounded to bfloat16's 8-bit mantissa and stored as float16,
    ``q = clip(rint(x / scale), -8, 7)``, two values a byte, the first in the low nibble (one
    difference: an all-zero block gets float16's smallest normal scale, not 0, which XNNPACK refuses).

    Returns the packed bytes (``[rows * cols / 2]`` uint8) and the scales (``[rows, cols / block]``
    float16). Computed ``block_bytes`` of rows at a time: beside the float32 weight, only its
    packed copy and one block of temporaries are held.
    """
    import ml_dtypes

    rows = array.reshape(array.shape[0], -1)
    width = rows.shape[1]
    if width % block:
        raise ValueError(f"width {width} is not divisible by block size {block}")
    scales = np.empty((rows.shape[0], width // block), np.float16)
    packed = np.empty(rows.size // 2, np.uint8)
    step = max(1, block_bytes // max(1, width * rows.itemsize))
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step].astype(np.float32, copy=False).reshape(-1, width // block, block)
        bound = np.maximum(np.maximum(np.abs(part.min(axis=2)), np.abs(part.max(axis=2))), np.float32(1e-9))
        scale = (bound / np.float32(7)).astype(ml_dtypes.bfloat16).astype(np.float16)
        # An all-zero block's scale underflows to 0, which XNNPACK refuses ("unsupported scale value"):
        # the smallest normal float16 instead (its values are 0 either way; ai-edge-quantizer writes 0).
        scale = np.where(scale == 0, np.finfo(np.float16).tiny, scale).astype(np.float16)
        scales[start : start + step] = scale
        values = np.clip(np.rint(part / scale.astype(np.float32)[..., None]), -8, 7).astype(np.int8).reshape(-1)
        low, high = values[0::2].view(np.uint8) & 0x0F, values[1::2].view(np.uint8) & 0x0F
        packed[start * width // 2 : (start + len(part)) * width // 2] = low | (high << 4)
    return packed, scales


def bind_weights(tflite_model: bytes, weights: Sequence[Callable[[], np.ndarray]], fmt: str = "float32",
                 progress: Callable[[int], None] | None = None) -> bytes:
    """Make the ``weight_{i}`` inputs of every signature constants holding ``weights[i]()``.

    Args:
        tflite_model: the converted graph (signature inputs named ``weight_{i}``).
        weights: one callable per weight returning its float32 array (called once each, in order,
            so only one is materialised at a time beyond the model's own).
        fmt: one of ``FORMATS`` (see the module's docstring).
        progress: called with the number of weights bound so far.

    Returns:
        The flatbuffer with every weight bound and the ``weight_{i}`` inputs gone.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    types = _tensor_types()
    block = int4_block_size(fmt)
    model = unpack_model(tflite_model)
    binder = _Binder(model)
    schema, ops = binder.schema, binder.ops
    # which subgraph inputs are weights
    places: dict[int, list[tuple]] = {}
    for signature in model.signatureDefs:
        subgraph = model.subgraphs[signature.subgraphIndex]
        kept = []
        for entry in signature.inputs:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name.startswith(WEIGHT_PREFIX):
                old = subgraph.tensors[entry.tensorIndex]
                old.name = (old.name or b"") + b"/input"  # the bound constants take the plain name
                places.setdefault(int(name[len(WEIGHT_PREFIX):]), []).append((subgraph, entry.tensorIndex))
            else:
                kept.append(entry)
        signature.inputs = kept
        subgraph.inputs = [entry.tensorIndex for entry in kept]
    if sorted(places) != list(range(len(weights))):
        raise ConversionError(f"the graph takes {len(places)} weights, {len(weights)} were given")
    uses = binder.uses(places)
    # 1. rewrite ops (BATCH_MATMUL -> FULLY_CONNECTED), and decide each use's final steps
    final_steps: dict[int, list[tuple[_Use, tuple]]] = {}
    for weight, weight_uses in uses.items():
        for use in weight_uses:
            final_steps.setdefault(weight, []).append((use, binder.matmul_to_fully_connected(use)))
    embedding_lookup = opcode_index(schema, model, ops.EMBEDDING_LOOKUP)
    dequantize = opcode_index(schema, model, ops.DEQUANTIZE, version=3)  # float16 input
    hybrid = opcode_index(schema, model, ops.FULLY_CONNECTED, version=FC_HYBRID_VERSION)
    prepended: dict[int, list] = {}  # id(subgraph) -> DEQUANTIZE ops to run first
    following: dict[int, list] = {}  # id(op) -> DEQUANTIZE ops to run right after it
    # 2. bind, one weight at a time
    expanded: dict[tuple, int] = {}  # (subgraph, buffer key) -> its DEQUANTIZE output tensor
    names: dict[tuple, list] = {}
    for weight, get in enumerate(weights):
        array = None
        for use, steps in final_steps.get(weight, []):
            subgraph, op = use.subgraph, use.op
            kind = binder.name(op)
            if array is None:
                array = np.asarray(get())
            floating = array.dtype == np.float32
            is_fc_weight = kind == ops.FULLY_CONNECTED and use.slot == 1
            is_table = kind == ops.GATHER and use.slot == 0 and len(subgraph.tensors[use.tensor].shape) == 2
            large = floating and array.size >= MIN_QUANTIZED_ELEMENTS
            if fmt == "int8" and large and (is_fc_weight or is_table):
                stored = "int8"
            elif block and floating and array.size >= MIN_INT4_ELEMENTS and (is_fc_weight or is_table):
                stored = "int4"
            elif fmt == "float16" and large and array.ndim >= 2:  # vectors (biases, norms) stay float32
                stored = "float16"
            else:
                stored = str(array.dtype)
            key = (weight, steps, stored)
            if key not in binder.buffers:
                value = _apply(array, steps)
                q = None
                shape, tensor_type = list(value.shape), None
                if stored == "int8":
                    value, scale = _int8_rows(value)
                    q = schema.QuantizationParametersT()
                    q.scale, q.zeroPoint, q.quantizedDimension = scale, np.zeros(len(scale), np.int64), 0
                elif stored == "int4":
                    try:
                        value, scale = _int4_blocks(value, block)
                    except ValueError as e:
                        other = "int4_blockwise (blocks of 32) or " if block != 32 else ""
                        raise ConversionError(
                            f"weight {weight} ({'x'.join(map(str, shape))}): {e}. The model has weights whose width "
                            f"is not a multiple of the block size; use {other}an int8 strategy.") from e
                    q = binder.add_buffer(scale), list(scale.shape)  # a scales tensor per subgraph, below
                    tensor_type = schema.TensorType.INT4
                elif stored == "float16":
                    value = value.astype(np.float16)
                binder.buffers[key] = binder.add_buffer(value)
                binder.quantization[key] = (q, shape, tensor_type or types[str(value.dtype)])
                del value
            q, shape, tensor_type = binder.quantization[key]
            tensor = schema.TensorT()
            # unique across signatures and uses (ai-edge-quantizer needs it; ``compact`` drops the prefix)
            count = names.setdefault((id(subgraph), weight), [0])
            tensor.name = (subgraph.name or b"") + f"/weight_{weight}{'_' * count[0]}{count[0] or ''}".encode()
            count[0] += 1
            if stored == "int4":
                q = _blockwise(schema, subgraph, tensor.name + b"_scales", *q, block)
            tensor.type, tensor.buffer, tensor.shape, tensor.quantization = tensor_type, binder.buffers[key], shape, q
            tensor.hasRank = True
            subgraph.tensors.append(tensor)
            index = len(subgraph.tensors) - 1
            if stored == "int8" and is_fc_weight:
                op.builtinOptions.asymmetricQuantizeInputs = True  # a hybrid op: int8 weights, float input
                op.opcodeIndex = hybrid
            elif stored in ("int8", "int4") and not is_fc_weight:
                # GATHER(table, ids) -> EMBEDDING_LOOKUP(ids, int8 table): a hybrid lookup (per-row scales)
                ids = subgraph.tensors[op.inputs[1]]
                options = op.builtinOptions
                if len(ids.shape) != 1 or (options is not None and (options.axis or options.batchDims)):
                    raise ConversionError(f"weight {weight}: a GATHER on {list(ids.shape)} ids cannot become an "
                                          "embedding lookup; quantize with weight_only_int8 instead")
                op.opcodeIndex, op.inputs = embedding_lookup, [op.inputs[1], -1]
                op.builtinOptionsType, op.builtinOptions = 0, None
                use = dataclasses.replace(use, slot=1)
            elif stored == "float16" and is_table:
                # GATHER the float16 rows, then DEQUANTIZE them: a table that went through a constant
                # DEQUANTIZE would be expanded to float32 by the runtime once per signature
                gathered = subgraph.tensors[op.outputs[0]]
                rows = schema.TensorT()
                rows.name, rows.type, rows.hasRank = gathered.name + b"/float16", schema.TensorType.FLOAT16, True
                rows.shape, rows.shapeSignature = gathered.shape, gathered.shapeSignature
                subgraph.tensors.append(rows)
                dq = schema.OperatorT()
                dq.opcodeIndex, dq.inputs, dq.outputs = dequantize, [len(subgraph.tensors) - 1], [op.outputs[0]]
                op.outputs = [len(subgraph.tensors) - 1]
                following.setdefault(id(op), []).append(dq)
            elif stored == "float16":  # float16 storage, expanded to float32 by a DEQUANTIZE run first
                ekey = (id(subgraph), key)
                if ekey not in expanded:
                    out = schema.TensorT()
                    out.name, out.type, out.shape, out.buffer = tensor.name + b"/float32", schema.TensorType.FLOAT32, shape, 0
                    out.hasRank = True
                    subgraph.tensors.append(out)
                    dq = schema.OperatorT()
                    dq.opcodeIndex, dq.inputs, dq.outputs = dequantize, [index], [len(subgraph.tensors) - 1]
                    prepended.setdefault(id(subgraph), []).append(dq)
                    expanded[ekey] = len(subgraph.tensors) - 1
                index = expanded[ekey]
            inputs = list(op.inputs)
            inputs[use.slot] = index
            op.inputs = inputs
        array = None
        if progress is not None:
            progress(weight + 1)
    # 3. drop the folded ops (their outputs are read by nobody now) and the weight inputs
    computed: dict[bytes, int] = {}  # constant results, shared between signatures
    for index, subgraph in enumerate(model.subgraphs):
        subgraph.operators = prepended.get(id(subgraph), []) + [
            after for op in subgraph.operators for after in [op, *following.get(id(op), [])]]
        _fold_constant_arithmetic(binder, subgraph, computed)
        _fuse_bias_adds(binder, subgraph)
        _drop_dead_ops(subgraph)
        drop_unused_tensors(model, index)
    drop_unused_buffers(model)
    packed = pack_into_bytearray(model, consume=True)
    del model, binder  # the bound arrays (a float32 Llama 3.2 1B: 6 GB), not to be held beside two copies
    return bytes(packed)


def _blockwise(schema, subgraph, name: bytes, buffer: int, shape: list, block: int):
    """Blockwise quantization parameters reading a float16 scales tensor added to ``subgraph``
    (a tensor index, so one per subgraph; the buffer is shared)."""
    scales = schema.TensorT()
    scales.name, scales.type, scales.buffer, scales.shape, scales.hasRank = (
        name, schema.TensorType.FLOAT16, buffer, shape, True)
    subgraph.tensors.append(scales)
    details = schema.BlockwiseQuantizationT()
    details.scales, details.zeroPoints, details.blockSize = len(subgraph.tensors) - 1, -1, block
    q = schema.QuantizationParametersT()
    q.detailsType, q.details, q.quantizedDimension = schema.QuantizationDetails.BlockwiseQuantization, details, 0
    return q


#: Largest result ``_fold_constant_arithmetic`` computes: vectors like a norm's scale, not a weight
#: (whose copy would sit beside the original while the file is packed).
_FOLDED_BYTES = 1 << 20


def _fold_constant_arithmetic(binder, subgraph, computed: dict) -> None:
    """``ADD`` / ``SUB`` / ``MUL`` of two float32 constants computed here, once, rather than at every
    call: with the weights as inputs, TensorFlow's converter could not fold them (Gemma's ``1 +
    scale`` in each of its RMS norms, 109 ops a decode step for Gemma 3 270M). The same float32
    arithmetic as the runtime's, so the outputs are bit for bit the same. ``computed``: results by
    content, so signatures share one buffer for each."""
    schema, ops, model = binder.schema, binder.ops, binder.model
    arithmetic = {ops.ADD: np.add, ops.SUB: np.subtract, ops.MUL: np.multiply}
    outputs = set(subgraph.outputs)

    def value(index):
        tensor = subgraph.tensors[index]
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is None or len(data) == 0 or tensor.type != schema.TensorType.FLOAT32 or has_scales(tensor):
            return None
        return np.frombuffer(bytes(data), np.float32).reshape([int(d) for d in tensor.shape])

    kept = []
    for op in subgraph.operators:
        function = arithmetic.get(binder.name(op))
        out = subgraph.tensors[op.outputs[0]] if len(op.outputs) == 1 else None
        if (function is None or len(op.inputs) != 2 or out is None or op.outputs[0] in outputs
                or out.type != schema.TensorType.FLOAT32 or has_scales(out)
                or int(np.prod([int(d) for d in out.shape])) * 4 > _FOLDED_BYTES
                or (op.builtinOptions is not None and op.builtinOptions.fusedActivationFunction)):
            kept.append(op)
            continue
        a, b = value(op.inputs[0]), value(op.inputs[1])
        result = None if a is None or b is None else function(a, b)
        if result is None or result.dtype != np.float32 or list(result.shape) != [int(d) for d in out.shape]:
            kept.append(op)
            continue
        key = result.tobytes()
        if key not in computed:
            computed[key] = binder.add_buffer(result)
        out.buffer = computed[key]
    subgraph.operators = kept


def _fuse_bias_adds(binder, subgraph) -> None:
    """``ADD(FULLY_CONNECTED(x, W), b)`` -> ``FULLY_CONNECTED(x, W, b)``, also across a ``RESHAPE``
    between them when ``b`` matches the reshaped trailing dimensions (a multi-head projection's
    ``[heads, head_dim]`` bias): what TensorFlow's converter does with constant weights."""
    schema, ops, model = binder.schema, binder.ops, binder.model
    readers: dict[int, list] = {}
    for op in subgraph.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    outputs = set(subgraph.outputs)

    def only_reader(tensor):
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    for fc in list(subgraph.operators):
        if binder.name(fc) != ops.FULLY_CONNECTED or len(fc.inputs) < 3 or fc.inputs[2] >= 0:
            continue
        if fc.builtinOptions is None or fc.builtinOptions.fusedActivationFunction:
            continue
        out = fc.outputs[0]
        channels = int(subgraph.tensors[fc.inputs[1]].shape[0])
        reshape, add = None, only_reader(out)
        if add is not None and binder.name(add) == ops.RESHAPE and add.inputs[0] == out:
            reshape, add = add, only_reader(add.outputs[0])
        if add is None or binder.name(add) != ops.ADD or (add.builtinOptions and add.builtinOptions.fusedActivationFunction):
            continue
        through = reshape.outputs[0] if reshape else out
        other = add.inputs[1] if add.inputs[0] == through else add.inputs[0]
        bias = subgraph.tensors[other]
        data = model.buffers[bias.buffer].data if bias.buffer else None
        if (data is None or len(data) == 0 or bias.type != schema.TensorType.FLOAT32
                or int(np.prod(bias.shape)) != channels):
            continue
        shape = [int(d) for d in subgraph.tensors[add.outputs[0]].shape]
        bias_shape = [int(d) for d in bias.shape]
        if reshape is not None and bias_shape != shape[len(shape) - len(bias_shape):]:
            continue  # the bias must line up with the reshaped trailing dimensions
        if reshape is None and (not bias_shape or bias_shape[-1] != channels):
            continue  # broadcast along the output channels only ([out], [1, 1, out])
        flat = schema.TensorT()
        flat.name, flat.type, flat.buffer, flat.shape, flat.hasRank = bias.name + b"/bias", bias.type, bias.buffer, [channels], True
        subgraph.tensors.append(flat)
        fc.inputs = [fc.inputs[0], fc.inputs[1], len(subgraph.tensors) - 1]
        if reshape is not None:
            reshape.outputs = list(add.outputs)
        else:
            fc.outputs = list(add.outputs)
        subgraph.operators = [op for op in subgraph.operators if op is not add]


def _drop_dead_ops(subgraph) -> None:
    """Remove ops whose outputs no op and no subgraph output reads (folded reshapes/transposes)."""
    while True:
        read = set(subgraph.outputs) | {i for op in subgraph.operators for i in op.inputs}
        alive = [op for op in subgraph.operators if any(o in read for o in op.outputs)]
        if len(alive) == len(subgraph.operators):
            return
        subgraph.operators = alive
