"""Small, checked rewrites of ``.tflite`` flatbuffers (no TensorFlow needed)."""

from __future__ import annotations

import hashlib

import numpy as np

from llm_tflite.litert.flatbuffer import (blockwise_references, builtin_code, drop_unused_buffers, has_scales,
                                         opcode_index, pack_model, tflite_schema, unpack_model)


def _load(tflite_model: bytes):
    return tflite_schema(), unpack_model(tflite_model)


def _pack(model) -> bytes:
    return pack_model(model)


def _embedding_lookup_code(schema, model) -> int:
    """Index of the EMBEDDING_LOOKUP operator code, added to ``model`` if missing."""
    return opcode_index(schema, model, schema.BuiltinOperator.EMBEDDING_LOOKUP)


def compact(tflite_model: bytes) -> bytes:
    """The final form of a multi-signature file: shared buffers, quantization parameters and names.

    Buffers are deduplicated (``dedupe_buffers``), and the ``<signature>/`` prefix that
    ``merge_signatures`` gave tensor names (tools like ai-edge-quantizer need globally
    unique names) is dropped, so each name is stored once for all signatures.
    """
    model = unpack_model(dedupe_buffers(tflite_model))
    for subgraph in model.subgraphs:
        prefix = (subgraph.name or b"") + b"/"
        for tensor in subgraph.tensors:
            if tensor.name and tensor.name.startswith(prefix):
                tensor.name = tensor.name[len(prefix):]
    return _pack(model)


def dedupe_buffers(tflite_model: bytes) -> bytes:
    """Point tensors with byte-identical constant data at one buffer and empty the copies.

    Tools that rewrite one signature at a time (e.g. ai-edge-quantizer) give each
    signature its own copy of a shared weight; this undoes that. Returns the input
    object itself when nothing was shared.
    """
    schema, model = _load(tflite_model)
    first_by_digest: dict[str, int] = {}
    canonical: dict[int, int] = {}
    for index, buffer in enumerate(model.buffers):
        data = buffer.data
        if data is None or len(data) == 0:
            continue
        digest = hashlib.sha256(bytes(data)).hexdigest()
        canonical[index] = first_by_digest.setdefault(digest, index)
    changed = False
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            target = canonical.get(tensor.buffer, tensor.buffer)
            if target != tensor.buffer:
                tensor.buffer, changed = target, True
    if not changed:
        return tflite_model
    drop_unused_buffers(model)
    return _pack(model)


def gathers_to_embedding_lookups(tflite_model: bytes) -> bytes:
    """Turn ``GATHER(table, ids)`` on a constant 2-D table with 1-D ids into ``EMBEDDING_LOOKUP``.

    The result is identical; the point is that weight quantizers (ai-edge-quantizer)
    quantize EMBEDDING_LOOKUP tables but leave GATHER tables in float.
    """
    schema, model = _load(tflite_model)
    ops = schema.BuiltinOperator
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) != ops.GATHER or len(op.inputs) != 2:
                continue
            table, ids = (subgraph.tensors[i] for i in op.inputs)
            options = op.builtinOptions
            constant = model.buffers[table.buffer].data is not None and len(model.buffers[table.buffer].data) > 0
            if not (constant and len(table.shape) == 2 and len(ids.shape) == 1
                    and ids.type == schema.TensorType.INT32 and table.type == schema.TensorType.FLOAT32
                    and (options is None or (options.axis == 0 and options.batchDims == 0))):
                continue
            op.opcodeIndex = _embedding_lookup_code(schema, model)
            op.inputs = [op.inputs[1], op.inputs[0]]
            op.builtinOptionsType = 0
            op.builtinOptions = None
            changed = True
    return _pack(model) if changed else tflite_model


def _signature(schema, key: str, subgraph, input_names, output_names):
    if len(input_names) != len(subgraph.inputs) or len(output_names) != len(subgraph.outputs):
        raise ValueError(f"signature {key!r}: {len(subgraph.inputs)} inputs / {len(subgraph.outputs)} outputs "
                         f"for {len(input_names)} / {len(output_names)} names")
    signature = schema.SignatureDefT()
    signature.signatureKey = key

    def tensor_maps(names, indices):
        maps = []
        for name, index in zip(names, indices):
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = name, int(index)
            maps.append(entry)
        return maps

    signature.inputs = tensor_maps(input_names, subgraph.inputs)
    signature.outputs = tensor_maps(output_names, subgraph.outputs)
    return signature


class SignatureMerger:
    """Builds one ``.tflite`` with one signature per converted single-function model, a signature at
    a time (``add``), so only the merged model and the newest part are held in memory.

    Operator codes are shared, and a constant buffer byte-identical to one already merged is not
    added again: per-signature conversions sharing weights cost neither size nor memory. The
    models must not use control flow (subgraph-indexed ops).
    """

    def __init__(self):
        self.schema = tflite_schema()
        self.merged = None
        self._digests: dict[bytes, int] = {}

    def _known(self, buffer, index: int) -> int | None:
        """The merged index of a buffer with the same bytes, recording ``index`` as that if new."""
        data = buffer.data
        if data is None or len(data) == 0:
            return None
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).digest()
        if digest in self._digests:
            return self._digests[digest]
        self._digests[digest] = index
        return None

    def add(self, key: str, data: bytes, input_names: list[str], output_names: list[str]) -> None:
        """Add the single-subgraph model ``data`` as signature ``key``; names in the order of the
        subgraph's inputs and outputs (the function's flattened order)."""
        _, model = _load(data)
        if len(model.subgraphs) != 1:
            raise ValueError(f"signature {key!r}: expected one subgraph, got {len(model.subgraphs)}")
        model.subgraphs[0].name = key
        for tensor in model.subgraphs[0].tensors:  # unique across signatures (ai-edge-quantizer needs it)
            tensor.name = f"{key}/".encode() + (tensor.name or b"")
        signature = _signature(self.schema, key, model.subgraphs[0], input_names, output_names)
        if self.merged is None:
            self.merged = model
            self.merged.signatureDefs = [signature]
            canonical = {i: self._known(buffer, i) for i, buffer in enumerate(model.buffers) if i}
            for tensor in model.subgraphs[0].tensors:
                tensor.buffer = canonical.get(tensor.buffer) or tensor.buffer
            return
        merged = self.merged
        code_map = {}
        for index, code in enumerate(model.operatorCodes):
            ident = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
            for j, existing in enumerate(merged.operatorCodes):
                if (existing.builtinCode, existing.deprecatedBuiltinCode, existing.customCode, existing.version) == ident:
                    code_map[index] = j
                    break
            else:
                merged.operatorCodes.append(code)
                code_map[index] = len(merged.operatorCodes) - 1
        buffer_map = {0: 0}
        for index, buffer in enumerate(model.buffers):
            if index:
                known = self._known(buffer, len(merged.buffers))
                if known is None:
                    merged.buffers.append(buffer)
                    known = len(merged.buffers) - 1
                buffer_map[index] = known
        subgraph = model.subgraphs[0]
        for tensor in subgraph.tensors:
            tensor.buffer = buffer_map[tensor.buffer]
        for op in subgraph.operators:
            op.opcodeIndex = code_map[op.opcodeIndex]
        merged.subgraphs.append(subgraph)
        signature.subgraphIndex = len(merged.subgraphs) - 1
        merged.signatureDefs.append(signature)

    def result(self) -> bytes:
        """The merged file, without the buffers no tensor uses any more."""
        drop_unused_buffers(self.merged)
        return _pack(self.merged)


def merge_signatures(models: dict[str, tuple[bytes, list[str], list[str]]]) -> bytes:
    """One ``.tflite`` with one signature per converted single-function model (``SignatureMerger``).

    ``models`` maps a signature key to ``(flatbuffer, input_names, output_names)``.
    """
    merger = SignatureMerger()
    for key, (data, input_names, output_names) in models.items():
        merger.add(key, data, input_names, output_names)
    return merger.result()


def _dequantized(schema, model, tensor):
    """Float values of a constant int8 tensor (per-tensor or per-channel along dimension 0), or None."""
    import numpy as np

    data = model.buffers[tensor.buffer].data
    q = tensor.quantization
    if tensor.type != schema.TensorType.INT8 or data is None or len(data) == 0 or q is None or q.scale is None:
        return None
    values = np.frombuffer(bytes(data), np.int8).astype(np.float32).reshape([int(d) for d in tensor.shape])
    scale = np.asarray(q.scale, np.float32)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32)
    if scale.size > 1:
        if q.quantizedDimension != 0:
            return None
        scale, zero = scale[:, None], zero[:, None]
    return (values - zero) * scale, np.asarray(q.scale, np.float32)


def share_tied_embeddings(tflite_model: bytes) -> bytes:
    """Let a quantized embedding lookup read the LM head's int8 weights when they hold the same table.

    GPT-2 and PaLM tie input and output embeddings. TFLite's dynamic-range quantizer stores
    that table twice: per-tensor int8 for ``GATHER`` (+ ``DEQUANTIZE``) and per-channel int8
    for the ``FULLY_CONNECTED`` head. When the two agree within a quantization step, the
    pair ``GATHER -> DEQUANTIZE`` becomes one hybrid ``EMBEDDING_LOOKUP`` on the head's
    weights (per-row scales, so the lookup is no less exact) and the copy is dropped.
    """
    import numpy as np

    schema, model = _load(tflite_model)
    ops = schema.BuiltinOperator
    changed = False
    for subgraph in model.subgraphs:
        codes = [builtin_code(model.operatorCodes[op.opcodeIndex]) for op in subgraph.operators]
        heads = {}
        for op, code in zip(subgraph.operators, codes):
            if code == ops.FULLY_CONNECTED and len(op.inputs) > 1:
                weight = subgraph.tensors[op.inputs[1]]
                if weight.type == schema.TensorType.INT8 and len(weight.shape) == 2:
                    heads.setdefault(tuple(int(d) for d in weight.shape), op.inputs[1])
        consumers = {}
        for op in subgraph.operators:
            for i in op.inputs:
                consumers.setdefault(i, []).append(op)
        remove = []
        for op, code in zip(subgraph.operators, codes):
            if code != ops.GATHER or len(op.inputs) != 2:
                continue
            table = subgraph.tensors[op.inputs[0]]
            head_index = heads.get(tuple(int(d) for d in table.shape))
            users = consumers.get(op.outputs[0], [])
            if (head_index is None or len(users) != 1
                    or builtin_code(model.operatorCodes[users[0].opcodeIndex]) != ops.DEQUANTIZE):
                continue
            options = op.builtinOptions
            if options is not None and (options.axis != 0 or options.batchDims != 0):
                continue
            table_values = _dequantized(schema, model, table)
            head_values = _dequantized(schema, model, subgraph.tensors[head_index])
            if table_values is None or head_values is None:
                continue
            tolerance = float(table_values[1].max()) + float(head_values[1].max())
            if not np.allclose(table_values[0], head_values[0], rtol=0, atol=tolerance):
                continue
            dequantize = users[0]
            op.opcodeIndex = _embedding_lookup_code(schema, model)
            op.inputs = [op.inputs[1], head_index]
            op.outputs = list(dequantize.outputs)
            op.builtinOptionsType, op.builtinOptions = 0, None
            remove.append(dequantize)
            changed = True
        subgraph.operators = [op for op in subgraph.operators if not any(op is r for r in remove)]
    if not changed:
        return tflite_model
    return _repack_without_unread_buffers(schema, model)


def _repack_without_unread_buffers(schema, model) -> bytes:
    """Empty the buffers no operator, subgraph input/output or metadata refers to any more, then
    drop every buffer no tensor refers to."""
    used = {m.buffer for m in (model.metadata or [])}
    for sg in model.subgraphs:
        referenced = {i for op in sg.operators for i in list(op.inputs) + list(op.outputs)}
        referenced |= set(sg.inputs) | set(sg.outputs)
        referenced |= blockwise_references(sg, referenced)  # int4 blocks' scales, read through their weight
        used |= {sg.tensors[i].buffer for i in referenced if i >= 0}
    for index, buffer in enumerate(model.buffers):
        if index not in used and buffer.data is not None and len(buffer.data):
            model.buffers[index] = schema.BufferT()
    drop_unused_buffers(model)
    return _pack(model)


def int8_casts_to_quantization(tflite_model: bytes) -> bytes:
    """Turn the ``CAST``s between int8 caches and float32 (``families.ops.Quantized``) into
    ``DEQUANTIZE`` / ``QUANTIZE`` over int8 tensors of scale 1 and zero point 0.

    The values are the same (a cast of an integer-valued float is exact, and so is quantizing one
    with scale 1); the point is that XNNPACK runs ``DEQUANTIZE`` and ``QUANTIZE`` and never
    ``CAST``, so with casts each layer's cache reads and writes left the delegate. Int8 tensors that
    already carry quantization (a strategy's weights) are left alone."""
    schema, model = _load(tflite_model)
    ops, types = schema.BuiltinOperator, schema.TensorType
    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) != ops.CAST:
                continue
            source, target = (subgraph.tensors[op.inputs[0]], subgraph.tensors[op.outputs[0]])
            # (operator, version): DEQUANTIZE from int8 is version 2, QUANTIZE to int8 per tensor version 1
            kind = {(types.INT8, types.FLOAT32): (ops.DEQUANTIZE, 2),
                    (types.FLOAT32, types.INT8): (ops.QUANTIZE, 1)}.get((source.type, target.type))
            integers = source if source.type == types.INT8 else target
            if kind is None or not _unit_or_no_quantization(integers):  # a scaled tensor's cast is no dequantize
                continue
            op.opcodeIndex = opcode_index(schema, model, *kind)
            op.builtinOptionsType, op.builtinOptions = 0, None
            changed = True
        for tensor in subgraph.tensors:
            if tensor.type == types.INT8 and not has_scales(tensor):
                quantization = schema.QuantizationParametersT()
                quantization.scale, quantization.zeroPoint, quantization.quantizedDimension = [1.0], [0], 0
                tensor.quantization = quantization
                changed = True
    return _pack(model) if changed else tflite_model


def _unit_or_no_quantization(tensor) -> bool:
    """An int8 tensor without quantization scales, or with scale 1 and zero point 0."""
    if not has_scales(tensor):
        return True
    q = tensor.quantization
    return list(q.scale) == [1.0] and (q.zeroPoint is None or [int(z) for z in q.zeroPoint] in ([], [0]))
