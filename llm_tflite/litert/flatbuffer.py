"""Reading and writing ``.tflite`` flatbuffers without TensorFlow: the schema, packing, operators, files."""

from __future__ import annotations

import os

import numpy as np

from llm_tflite.errors import ModelFileError

TFLITE_IDENTIFIER = b"TFL3"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TensorFlow-only installs
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _check_flatbuffer(buf: bytes, where: str) -> None:
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
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_model), 0)
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) > 1 and getattr(buffer, "size", 0):
            buffer.data = np.frombuffer(tflite_model, np.uint8, count=buffer.size, offset=buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0
    return model


def pack_model(model) -> bytes:
    """Serialize; identical quantization parameters and strings are written once and shared.

    Each signature's subgraph has its own tensor for a shared weight, and per-channel
    scales and zero points (12 bytes per output channel) would otherwise be repeated per
    signature: ~0.4 MB of a 4 MB int8 GPT-2 with four signatures. Flatbuffers allow
    several tables to point at one child table, and TFLite only reads them.
    """
    import flatbuffers

    quantization_cls = _schema().QuantizationParametersT
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

    shared_strings: dict = {}
    builder = SharingBuilder(1 << 20)
    quantization_cls.Pack = pack_shared
    try:
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    finally:
        quantization_cls.Pack = pack_one
    return bytes(builder.Output())


def read_model_file(path: str) -> bytes:
    """The bytes of a ``.tflite`` file, with a clear error when it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"no such model file: {path!r}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a .tflite file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ModelFileError(f"cannot read {path!r}: {e}") from e


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a failure leaves no partial file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def operator_names(tflite_model: bytes) -> set[str]:
    """Names of the operators a flatbuffer uses: builtin names, ``CUSTOM:<name>`` for custom/Flex ops."""
    schema = _schema()
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


def non_builtin_ops(tflite_model: bytes) -> set[str]:
    """Custom and Flex (``Flex*``) operators: what stock LiteRT cannot run without extra kernels."""
    return {n for n in operator_names(tflite_model) if n.startswith("CUSTOM:")}
