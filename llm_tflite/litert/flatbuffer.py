"""Reading and writing ``.tflite`` flatbuffers without TensorFlow: the schema, packing, operators, files."""

from __future__ import annotations

import mmap
import os

import numpy as np

from llm_tflite.console import stop_if_interrupted
from llm_tflite.errors import ModelFileError

TFLITE_IDENTIFIER = b"TFL3"
#: Bytes a flatbuffer can address (32-bit offsets): the most a converted ``.tflite`` may hold.
FLATBUFFER_LIMIT = 2**31


def tflite_schema():
    """The TFLite flatbuffer schema module (``ai_edge_litert``'s, or TensorFlow's as a fallback)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TensorFlow-only installs
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def check_flatbuffer(buf: bytes, where: str) -> None:
    """``ModelFileError`` unless ``buf`` starts like a ``.tflite`` flatbuffer (its ``TFL3`` identifier)."""
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(
            f"{where} is not a TensorFlow Lite model (no TFL3 flatbuffer header); "
            "convert a model with `llm-tflite convert`"
        )


def unpack_model(tflite_model: bytes):
    """The flatbuffer as a mutable ``ModelT``, with buffers stored after it (offset/size) moved inline.

    Some writers (ai-edge-quantizer) keep large buffers outside the flatbuffer; repacking
    a ``ModelT`` would silently drop them, so they are materialised here.
    """
    schema = tflite_schema()
    # the buffers' arrays are read-only views into these bytes: immutable ones need no copy
    packed = tflite_model if isinstance(tflite_model, bytes) else bytearray(tflite_model)
    model = schema.ModelT.InitFromPackedBuf(packed, 0)
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) > 1 and getattr(buffer, "size", 0):
            data = np.frombuffer(tflite_model, np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.data = data if isinstance(tflite_model, bytes) else data.copy()
            buffer.offset, buffer.size = 0, 0
    location = [m for m in model.metadata or [] if m.name == BUFFER_LOCATION[0]]
    if location:  # packing decides again where the buffers go (pack_into_bytearray)
        model.metadata = [m for m in model.metadata if m.name != BUFFER_LOCATION[0]]
        drop_unused_buffers(model)
    return model


def builtin_code(code) -> int:
    """The builtin operator of an ``OperatorCodeT`` (old files keep it in ``deprecatedBuiltinCode``)."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def opcode_index(schema, model, builtin: int, version: int = 1) -> int:
    """Index of the operator code for ``builtin`` at ``version``, added to ``model`` if missing."""
    for index, code in enumerate(model.operatorCodes):
        if builtin_code(code) == builtin and code.version == version:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def drop_unused_buffers(model) -> None:
    """Remove the buffers of a ``ModelT`` that no tensor or metadata entry refers to, renumbering the
    rest: rewrites leave such entries behind (deduplicated, folded or bound weights)."""
    used = {0} | {m.buffer for m in (model.metadata or [])} | {t.buffer for sg in model.subgraphs for t in sg.tensors}
    if len(used) == len(model.buffers):
        return
    order = sorted(used)
    new = {old: i for i, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = new[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = new[entry.buffer]


def has_scales(tensor) -> bool:
    """Whether an unpacked tensor carries quantization scales (a strategy's weights, or a rewritten cache)."""
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def drop_unused_tensors(model, subgraph_index: int) -> None:
    """Remove tensors nothing refers to (the weight inputs, folded intermediates) and renumber:
    tools that read every tensor (ai-edge-quantizer's calibration) fail on unallocated ones."""
    subgraph = model.subgraphs[subgraph_index]
    used = set(subgraph.inputs) | set(subgraph.outputs)
    for op in subgraph.operators:
        used |= {i for i in list(op.inputs) + list(op.outputs) if i >= 0}
    blockwise = [t.quantization.details for t in (subgraph.tensors[i] for i in used) if _blockwise_details(t)]
    used |= blockwise_references(subgraph, used)  # int4 blocks' scales tensors
    order = sorted(used)
    new = {old: i for i, old in enumerate(order)}
    subgraph.tensors = [subgraph.tensors[i] for i in order]
    subgraph.inputs = [new[i] for i in subgraph.inputs]
    subgraph.outputs = [new[i] for i in subgraph.outputs]
    for op in subgraph.operators:
        op.inputs = [new[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [new[i] for i in op.outputs]
        if op.intermediates is not None and len(op.intermediates):
            op.intermediates = [new[i] for i in op.intermediates if i in new]
    for d in {id(d): d for d in blockwise}.values():  # shared parameters are renumbered once
        d.scales = new[d.scales]
        d.zeroPoints = new[d.zeroPoints] if d.zeroPoints >= 0 else d.zeroPoints
    for signature in model.signatureDefs:
        if signature.subgraphIndex == subgraph_index:
            for entry in list(signature.inputs) + list(signature.outputs):
                entry.tensorIndex = new[entry.tensorIndex]


def blockwise_references(subgraph, tensors) -> set[int]:
    """The tensors that blockwise-quantized ones among ``tensors`` read through their quantization
    details (an int4 weight's scales), not as op inputs: a rewrite must keep them with the weight."""
    details = [subgraph.tensors[i].quantization.details for i in tensors
               if i >= 0 and _blockwise_details(subgraph.tensors[i])]
    return {i for d in details for i in (d.scales, d.zeroPoints) if i >= 0}


def _blockwise_details(tensor) -> bool:
    """True if ``tensor`` is blockwise quantized: its details name other tensors of its subgraph."""
    q = tensor.quantization
    return q is not None and q.details is not None and \
        q.detailsType == tflite_schema().QuantizationDetails.BlockwiseQuantization


def pack_model(model) -> bytes:
    """``pack_into_bytearray`` as ``bytes``."""
    return bytes(pack_into_bytearray(model))


#: Past this many bytes of weights, they are stored after the flatbuffer (``Buffer.offset``/``size``,
#: "buffer_offset mode"), as TensorFlow's exporter does past its 2 GiB limit minus 512 MiB: the
#: flatbuffer holds the graph only, and the file can pass 2 GiB (a float32 Qwen 3 0.6B: 2.4 GB).
OUTSIDE_FROM = FLATBUFFER_LIMIT - (512 << 20)
#: Alignment of weights stored after the flatbuffer (LiteRT's host memory alignment).
OUTSIDE_ALIGNMENT = 64
#: The metadata entry that marks buffer_offset mode, as TensorFlow's exporter writes it.
BUFFER_LOCATION = (b"buffer_location", b"outside flatbuffers")


def pack_into_bytearray(model, *, consume: bool = False) -> bytearray:
    """Serialize: inline, or with the weights after the flatbuffer when they pass ``OUTSIDE_FROM``.

    Memory: the model's arrays and the file being written; with ``consume`` (the caller discards
    ``model``), weights written after the flatbuffer are let go one by one as they are copied, so
    the two are not held whole together."""
    arrays = sum(b.data.nbytes for b in model.buffers or [] if isinstance(b.data, np.ndarray))
    if arrays <= OUTSIDE_FROM:
        return _pack_inline(model)
    return _pack_outside(model, consume)


def _pack_outside(model, consume: bool = False) -> bytearray:
    """The flatbuffer with every weight buffer's ``offset``/``size`` pointing after it, then the weights,
    each aligned to ``OUTSIDE_ALIGNMENT``; metadata stays inline (the record is read from it). The
    file grows weight by weight (a large bytearray is resized in place), so with ``consume`` the
    weights' pages move from the model to the file rather than being held twice."""
    schema = tflite_schema()
    metadata = {m.buffer for m in model.metadata or []}
    moved = [(b, b.data) for i, b in enumerate(model.buffers) if i not in metadata
             and isinstance(b.data, np.ndarray) and b.data.nbytes]
    entry, location = schema.MetadataT(), schema.BufferT()
    entry.name, location.data = BUFFER_LOCATION[0], np.frombuffer(BUFFER_LOCATION[1], np.uint8)
    model.buffers.append(location)
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != BUFFER_LOCATION[0]] + [entry]

    def align(n: int) -> int:
        return -(-n // OUTSIDE_ALIGNMENT) * OUTSIDE_ALIGNMENT

    try:
        for buffer, data in moved:  # placeholders: 64-bit fields are written the same size whatever they hold
            buffer.data, buffer.offset, buffer.size = None, 2, data.nbytes
        head = len(_pack_inline(model))
        at, places = align(head), []
        for buffer, data in moved:
            buffer.offset = at
            places.append(at)
            at = align(at + data.nbytes)
        packed = _pack_inline(model)
        if len(packed) != head:
            raise AssertionError(f"the flatbuffer changed size between passes ({head} -> {len(packed)})")
        for index, place in enumerate(places):
            packed.extend(bytes(place - len(packed)))  # alignment
            packed.extend(memoryview(np.ascontiguousarray(moved[index][1]).reshape(-1).view(np.uint8)))
            if consume:
                moved[index] = (moved[index][0], None)
        packed.extend(bytes(at - len(packed)))
        return packed
    finally:  # the ModelT is the caller's: leave it as it was
        for buffer, data in moved:
            buffer.data, buffer.offset, buffer.size = data, 0, 0
        model.metadata = [m for m in model.metadata if m is not entry]
        model.buffers.pop()


#: Vectors up to this size are written once per content (``_pack_inline``); weights are not compared.
_SHARED_VECTOR_BYTES = 64 << 10


def _pack_inline(model) -> bytearray:
    """Serialize; identical quantization parameters, strings and small vectors are written once and shared.

    Memory: the model's arrays and the builder, sized for them up front (growing by doubling
    copies the file each time); the result is the builder's own bytes.

    Each signature's subgraph has its own tensor for a shared weight, and per-channel
    scales and zero points (12 bytes per output channel) would otherwise be repeated per
    signature: ~0.4 MB of a 4 MB int8 GPT-2 with four signatures. Flatbuffers allow
    several tables to point at one child table, and TFLite only reads them.
    """
    import flatbuffers

    quantization_cls = tflite_schema().QuantizationParametersT
    pack_one = quantization_cls.Pack
    packed: dict[tuple, int] = {}

    def pack_shared(self, builder):
        if self.details is not None:
            return pack_one(self, builder)
        key = tuple(
            None if v is None else (np.asarray(v).dtype.str, np.asarray(v).tobytes())
            for v in (self.min, self.max, self.scale, self.zeroPoint)
        ) + (self.quantizedDimension,)
        if key not in packed:
            packed[key] = pack_one(self, builder)
        return packed[key]

    class SharingBuilder(flatbuffers.Builder):
        """Tensor names repeat across signatures too: write each string once."""

        def CreateString(self, s, encoding="utf-8", errors="strict"):
            key = bytes(s) if not isinstance(s, str) else s
            if key not in shared_strings:
                shared_strings[key] = flatbuffers.Builder.CreateString(self, s, encoding, errors)
            return shared_strings[key]

        def CreateNumpyVector(self, x):
            """The array's bytes straight into the builder: flatbuffers' own makes two copies of
            them first (three for int8, which it byteswaps). A small vector equal to one already
            written is that one: signatures repeat shapes, operator inputs and outputs, and
            per-channel zero points (zeros, 8 bytes a channel) for every weight. TFLite only
            reads them."""
            if not isinstance(x, np.ndarray) or x.ndim > 1 or x.dtype.kind not in "biuf" or \
                    (x.itemsize > 1 and x.dtype.str[0] == ">"):
                return flatbuffers.Builder.CreateNumpyVector(self, x)
            # not bytes (a buffer's data: the runtime tells constant buffers apart by their address)
            key = (x.dtype.str, x.tobytes()) if x.itemsize > 1 and x.nbytes <= _SHARED_VECTOR_BYTES else None
            if key is not None and key in shared_vectors:
                return shared_vectors[key]
            self.StartVector(x.itemsize, x.size, x.dtype.alignment)
            self.head -= x.nbytes
            np.frombuffer(self.Bytes, np.uint8, count=x.nbytes, offset=self.head)[:] = \
                np.ascontiguousarray(x).reshape(-1).view(np.uint8)
            self.vectorNumElems = x.size
            offset = self.EndVector()
            if key is not None:
                shared_vectors[key] = offset
            return offset

    shared_strings: dict = {}
    shared_vectors: dict = {}
    arrays = sum(b.data.nbytes for b in model.buffers or [] if isinstance(b.data, np.ndarray))
    # sized for the weights up front: growing by doubling copies the whole file each time
    builder = SharingBuilder(min(arrays + (8 << 20), flatbuffers.Builder.MAX_BUFFER_SIZE))
    quantization_cls.Pack = pack_shared
    try:
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    finally:
        quantization_cls.Pack = pack_one
    packed, head = builder.Bytes, builder.Head()
    del builder
    del packed[:head]  # the unused front (a flatbuffer is built backwards): O(1) for a bytearray
    return packed


def weight_bytes(tflite_model) -> int:
    """Bytes of the model's constant buffers (weights, inline or stored after the flatbuffer; not metadata)."""
    model = tflite_schema().Model.GetRootAs(tflite_model, 0)
    metadata = {model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    total = 0
    for i in set(range(model.BuffersLength())) - metadata:
        buffer = model.Buffers(i)
        total += buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
    return total


def _open_model_file(path: str):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"no such model file: {path!r}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a .tflite file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise ModelFileError(f"cannot read {path!r}: {e}") from e


def read_model_file(path: str) -> bytes:
    """The bytes of a ``.tflite`` file, with a clear error when it is missing or unreadable."""
    with _open_model_file(path) as f:
        try:
            return f.read()
        except OSError as e:
            raise ModelFileError(f"cannot read {path!r}: {e}") from e


def map_model_file(path: str):
    """A read-only memory map of a model file (``bytes`` when it is empty), errors as ``read_model_file``.

    Pages are read when touched and belong to the page cache: checking a file's tables costs
    a few pages of memory, not the file's size.
    """
    with _open_model_file(path) as f:
        try:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelFileError(f"cannot read {path!r}: {e}") from e


def release_pages(buf, start: int, end: int) -> None:
    """Drop the pages of ``buf[start:end]`` from this process's memory if ``buf`` is a file map
    (they are read again from the file if touched): reading a whole mapped file stays cheap."""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        aligned = start - start % mmap.PAGESIZE
        if end > aligned:
            buf.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)


def release_mapped_file(path: str) -> int:
    """Drop this process's mapped pages of the file at ``path`` (every mapping of it, the native
    runtime's included): the pages stay in the page cache and fault back in when read. Returns
    the bytes of mappings advised; 0 where this is not supported (outside Linux).

    The runtime maps the model and reads its tables and small constants at load, and embedding
    rows while generating; the kernel maps whole page-cache folios (often megabytes) around each
    read, so a load could leave most of a freshly written model's weights resident although
    XNNPACK's cache holds them packed. The mappings are also marked random-access and the
    file's unmapped pages dropped from the page cache, so later reads map single pages.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    target = os.path.realpath(path)
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5] == target:
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((start, end))
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        return 0
    advised = 0
    for start, end in ranges:
        # later reads (embedding rows, small constants) fault in their own pages, not their neighbours'
        madvise(start, end - start, mmap.MADV_RANDOM)
        if madvise(start, end - start, mmap.MADV_DONTNEED) == 0:
            advised += end - start
    # ... from a page cache without the large folios a freshly written or read file sits in (a
    # fault maps its whole folio): the file's unmapped clean pages are dropped and come back singly
    try:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    return advised


def check_writable(path, *, directory: bool = False) -> None:
    """``OutputPathError`` now, before minutes of work, if ``path`` cannot be written.

    ``directory``: ``path`` is a directory to create or fill (a preset); otherwise a file.
    """
    from llm_tflite.errors import OutputPathError

    path = os.path.abspath(os.fspath(path))
    if not directory and os.path.isdir(path):
        raise OutputPathError(f"{path!r} is a directory; give a file name for the output")
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{path!r} is a file; give a directory for the output")
    parent = path if directory and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):  # it will be created: the nearest existing ancestor must be writable
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {path!r}: {parent!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path!r}: no permission to write in {parent!r}; choose another path")


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a failure (or a Ctrl+C whose
    ``KeyboardInterrupt`` was lost on the way) leaves no partial file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        stop_if_interrupted()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def operator_names(tflite_model: bytes) -> set[str]:
    """Names of the operators a flatbuffer uses: builtin names, ``CUSTOM:<name>`` for custom/Flex ops."""
    schema = tflite_schema()
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(tflite_model, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            names.add("CUSTOM:" + code.CustomCode().decode())
        else:
            names.add(builtin_names.get(op, str(op)))
    return names


def has_tensor_type(tflite_model: bytes, type_name: str) -> bool:
    """True if a tensor of any subgraph has this type (``"INT4"``), read without unpacking the model."""
    schema = tflite_schema()
    wanted = getattr(schema.TensorType, type_name)
    model = schema.Model.GetRootAs(tflite_model, 0)
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        if any(subgraph.Tensors(t).Type() == wanted for t in range(subgraph.TensorsLength())):
            return True
    return False


def non_builtin_ops(tflite_model: bytes) -> set[str]:
    """Custom and Flex (``Flex*``) operators: what stock LiteRT cannot run without extra kernels."""
    return {n for n in operator_names(tflite_model) if n.startswith("CUSTOM:")}


#: Bytes per element of each TFLite tensor type (sub-byte types rounded up).
_TYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "STRING": 1, "BOOL": 1, "INT16": 2,
               "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "RESOURCE": 1, "VARIANT": 1,
               "UINT32": 4, "UINT16": 2, "INT4": 1, "BFLOAT16": 2}

#: No tensor of a model we run may need more than this (a corrupted shape could ask for terabytes).
MAX_TENSOR_BYTES = 8 << 30


def check_tensor_sizes(buf: bytes, where: str = "this file", limit: int = MAX_TENSOR_BYTES) -> None:
    """``ModelFileError`` if any tensor's shape is invalid or would need more than ``limit`` bytes.

    Runs on the flatbuffer before the native runtime sees it, so a damaged shape ends in a
    typed error instead of an allocation the kernel kills the process for.
    """
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    try:
        model = schema.Model.GetRootAs(buf, 0)
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
                if any(d < -1 for d in shape):
                    raise ModelFileError(f"{where} is damaged: tensor {t} of subgraph {s} has shape {shape}; "
                                         "re-convert it")
                elements = 1
                for d in shape:
                    elements *= max(d, 1)
                if elements * _TYPE_BYTES.get(names.get(tensor.Type()), 8) > limit:
                    raise ModelFileError(
                        f"{where} is damaged or too large to run: tensor {t} of subgraph {s} (shape {shape}) would "
                        f"need more than {limit / 2**30:.0f} GiB; re-convert it"
                    )
    except ModelFileError:
        raise
    except Exception as e:  # the flatbuffer library raises IndexError/struct errors on damaged tables
        raise ModelFileError(f"{where} is a corrupt TensorFlow Lite file ({type(e).__name__}: {e}); re-convert it") from e
