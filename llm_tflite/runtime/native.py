"""LiteRT's C API through ctypes: a compiled model that runs without holding the GIL.

``ai_edge_litert``'s Python wrapper holds the GIL for as long as a model runs, so while a batched
decode step computes (tens of milliseconds), a server's event loop, its streams and every other
Python thread stand still. ctypes releases the GIL around each foreign call, so running through
LiteRT's stable C API (``libLiteRt.so``, shipped in the same wheel) lets them go on.

``NativeModel`` offers what ``PrefillDecodeEngine`` uses of the wrapper's ``CompiledModel``
(signature details, buffers by name, ``run_by_name``). Every handle (environment, model, options,
compiled model, tensor buffers) comes from ``libLiteRt.so``: the wrapper's objects belong to
another copy of LiteRT (inside ``libpywrap_litert_common.so``) and cannot be mixed with these.
Tensor buffers are LiteRT's own (made from the compiled model's requirements, reference-counted
by LiteRT); ``Buffer.array`` is a NumPy view of their host memory, valid while the ``Buffer``
lives.

Checked against LiteRT's C headers at its 2.3.0 version commit and the symbols the wheel
exports; the two structs passed by value are checked for size at import. Where the library or a
symbol is missing, ``NativeUnavailable`` is raised and the engine uses the Python wrapper
(``LLM_TFLITE_BINDING=python`` asks for the wrapper outright).
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from ctypes import POINTER, Structure, Union, byref, c_bool, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t
from ctypes import c_uint, c_uint32, c_void_p

import numpy as np

#: ``LLM_TFLITE_BINDING=python``: run models through ``ai_edge_litert``'s Python wrapper instead.
BINDING_ENV = "LLM_TFLITE_BINDING"

_STATUS = {0: "Ok", 1: "ErrorInvalidArgument", 2: "ErrorMemoryAllocationFailure", 3: "ErrorRuntimeFailure",
           4: "ErrorMissingInputTensor", 5: "ErrorUnsupported", 6: "ErrorNotFound", 500: "ErrorFileIO",
           501: "ErrorInvalidFlatbuffer", 504: "ErrorCompilation"}  # LiteRtStatus (LiteRtGetStatusString isn't exported)
_HW_CPU = 1  # LiteRtHwAccelerators
_ENV_RUNTIME_LIBRARY_DIR, _ANY_STRING = 22, 8  # LiteRtEnvOptionTag, LiteRtAnyType
_RANKED = 0  # LiteRtTensorTypeId
_LOCK_READ_WRITE = 2  # LiteRtTensorBufferLockMode
_CPU_OPTIONS = b"xnnpack"  # LrtGetCpuOptionsIdentifier(): its payload is TOML text
_DTYPES = {1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8,
           10: np.float16, 11: np.float64}  # LiteRtElementType
_MAX_RANK = 8


class NativeUnavailable(Exception):
    """This process cannot use the C API (no library, a symbol missing, or asked not to)."""


class _Layout(Structure):  # litert_layout.h
    _fields_ = [("rank", c_uint, 7), ("has_strides", c_uint, 1),
                ("dimensions", c_int32 * _MAX_RANK), ("strides", c_uint32 * _MAX_RANK)]


class _RankedType(Structure):  # litert_model_types.h
    _fields_ = [("element_type", c_int), ("layout", _Layout)]


class _AnyValue(Union):
    _fields_ = [("bool_value", c_bool), ("int_value", c_int64), ("real_value", c_double),
                ("str_value", c_char_p), ("ptr_value", c_void_p)]


class _Any(Structure):  # litert_any.h
    _fields_ = [("type", c_int), ("value", _AnyValue)]


class _EnvOption(Structure):  # litert_environment_options.h
    _fields_ = [("tag", c_int), ("value", _Any)]


_H = c_void_p
_SIGNATURES = {  # name: argtypes; every one returns a LiteRtStatus but the Destroy* ones
    "LiteRtCreateEnvironment": [c_int, POINTER(_EnvOption), POINTER(_H)],
    "LiteRtCreateModelFromFile": [_H, c_char_p, POINTER(_H)],
    "LiteRtCreateModelFromBuffer": [_H, c_void_p, c_size_t, POINTER(_H)],
    "LiteRtDestroyModel": [_H],
    "LiteRtGetNumModelSignatures": [_H, POINTER(c_size_t)],
    "LiteRtGetModelSignature": [_H, c_size_t, POINTER(_H)],
    "LiteRtGetSignatureKey": [_H, POINTER(c_char_p)],
    "LiteRtGetNumSignatureInputs": [_H, POINTER(c_size_t)],
    "LiteRtGetNumSignatureOutputs": [_H, POINTER(c_size_t)],
    "LiteRtGetSignatureInputName": [_H, c_size_t, POINTER(c_char_p)],
    "LiteRtGetSignatureOutputName": [_H, c_size_t, POINTER(c_char_p)],
    "LiteRtGetSignatureInputTensorByIndex": [_H, c_size_t, POINTER(_H)],
    "LiteRtGetSignatureOutputTensorByIndex": [_H, c_size_t, POINTER(_H)],
    "LiteRtGetTensorTypeId": [_H, POINTER(c_int)],
    "LiteRtGetRankedTensorType": [_H, POINTER(_RankedType)],
    "LiteRtCreateOptions": [POINTER(_H)],
    "LiteRtDestroyOptions": [_H],
    "LiteRtSetOptionsHardwareAccelerators": [_H, c_int],
    "LiteRtCreateOpaqueOptions": [c_char_p, c_void_p, c_void_p, POINTER(_H)],
    "LiteRtAddOpaqueOptions": [_H, _H],
    "LiteRtDestroyOpaqueOptions": [_H],
    "LiteRtCreateCompiledModel": [_H, _H, _H, POINTER(_H)],
    "LiteRtDestroyCompiledModel": [_H],
    "LiteRtGetCompiledModelInputBufferRequirements": [_H, c_size_t, c_size_t, POINTER(_H)],
    "LiteRtGetCompiledModelOutputBufferRequirements": [_H, c_size_t, c_size_t, POINTER(_H)],
    "LiteRtGetTensorBufferRequirementsBufferSize": [_H, POINTER(c_size_t)],
    "LiteRtCreateManagedTensorBufferFromRequirements": [_H, POINTER(_RankedType), _H, POINTER(_H)],
    "LiteRtLockTensorBuffer": [_H, POINTER(c_void_p), c_int],
    "LiteRtUnlockTensorBuffer": [_H],
    "LiteRtDestroyTensorBuffer": [_H],
    "LiteRtRunCompiledModel": [_H, c_size_t, c_size_t, POINTER(_H), c_size_t, POINTER(_H)],
}


class _Library:
    def __init__(self, path: str):
        if not (ctypes.sizeof(_Layout) == 68 and ctypes.sizeof(_RankedType) == 72 and ctypes.sizeof(_EnvOption) == 24):
            raise NativeUnavailable("LiteRT's structs do not have the sizes its 2.3.0 headers give")
        try:
            dll = ctypes.CDLL(path)  # CDLL: the GIL is released for every call
            for name, argtypes in _SIGNATURES.items():
                function = getattr(dll, name)
                function.argtypes, function.restype = argtypes, None if name.startswith("LiteRtDestroy") else c_int
                setattr(self, name, function)
            libc = ctypes.CDLL(None)
            self.malloc, self.free = libc.malloc, libc.free
        except (OSError, AttributeError) as e:
            raise NativeUnavailable(f"LiteRT's C API is not usable here: {e}") from e
        self.malloc.restype, self.malloc.argtypes = c_void_p, [c_size_t]
        self.free.restype, self.free.argtypes = None, [c_void_p]
        self.environment = None  # one for the process, as the wrapper's (accelerators register once)

    def check(self, name: str, *args) -> None:
        status = getattr(self, name)(*args)
        if status:
            raise RuntimeError(f"{name} failed: {_STATUS.get(status, 'status')} ({status})")


_library = None
_library_lock = threading.Lock()


def library() -> _Library:
    """The C API, loaded once, with the process's environment; ``NativeUnavailable`` if not here."""
    global _library
    if os.environ.get(BINDING_ENV, "").lower() == "python":
        raise NativeUnavailable(f"{BINDING_ENV}=python")
    with _library_lock:
        if _library is None:
            try:
                import ai_edge_litert
            except ImportError as e:
                raise NativeUnavailable(str(e)) from e
            runtime = os.path.dirname(os.path.abspath(ai_edge_litert.__file__))
            lib = _Library(os.path.join(runtime, "libLiteRt.so"))
            path = os.fsencode(runtime)
            option = _EnvOption(tag=_ENV_RUNTIME_LIBRARY_DIR)  # what the wrapper's Environment.create passes
            option.value.type, option.value.value.str_value = _ANY_STRING, path
            handle = _H()
            try:
                lib.check("LiteRtCreateEnvironment", 1, byref(option), byref(handle))
            except RuntimeError as e:
                raise NativeUnavailable(str(e)) from e
            lib.environment = handle
            from llm_tflite.console import quiet_native_exit

            quiet_native_exit()  # its accelerators' destructors log after Python exits
            _library = lib
        return _library


class Buffer:
    """A tensor buffer LiteRT allocated for a signature's tensor; ``array`` is a NumPy view of it.
    ``write`` / ``read`` as the wrapper's ``TensorBuffer``."""

    def __init__(self, lib: _Library, requirements, element_type: int, shape: tuple[int, ...]):
        kind = _RankedType(element_type=element_type)
        kind.layout.rank = len(shape)
        for i, size in enumerate(shape):
            kind.layout.dimensions[i] = size
        handle = _H()
        lib.check("LiteRtCreateManagedTensorBufferFromRequirements", lib.environment, byref(kind), requirements,
                  byref(handle))
        self.handle = handle
        try:
            address = c_void_p()
            lib.check("LiteRtLockTensorBuffer", handle, byref(address), _LOCK_READ_WRITE)  # host memory: its address
            lib.check("LiteRtUnlockTensorBuffer", handle)
            if not address.value:
                raise RuntimeError("the runtime gave a tensor buffer without host memory")
        except BaseException:
            lib.LiteRtDestroyTensorBuffer(handle)
            raise
        dtype = np.dtype(_DTYPES[element_type])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        memory = (ctypes.c_char * nbytes).from_address(address.value)
        # Freed once nothing holds the memory: this buffer, or any view of it (a view's base is it).
        # Not at exit: a daemon thread may still be running a model on it.
        weakref.finalize(memory, lib.LiteRtDestroyTensorBuffer, handle.value).atexit = False
        #: The buffer's memory (LiteRT's own allocation, which the model reads and writes in place).
        self.array = np.frombuffer(memory, dtype).reshape(shape)

    def write(self, array) -> None:
        self.array.reshape(-1)[:] = np.asarray(array, self.array.dtype).reshape(-1)

    def read(self, count: int, dtype) -> np.ndarray:
        if np.dtype(dtype) != self.array.dtype:
            raise ValueError(f"the buffer holds {self.array.dtype}, not {np.dtype(dtype)}")
        return self.array.reshape(-1)[:count].copy()


class NativeModel:
    """A compiled model for the CPU (XNNPACK, ``num_threads``, packed weights in ``weight_cache_path``)
    of the file ``path``, or of ``data`` (kept alive by the caller)."""

    def __init__(self, path=None, data=None, *, num_threads: int | None, weight_cache_path: str):
        lib = self.lib = library()
        self.model, self.options, self.handle = _H(), _H(), _H()
        self._lock = threading.Lock()
        try:
            if data is None:
                lib.check("LiteRtCreateModelFromFile", lib.environment, os.fsencode(os.fspath(path)), byref(self.model))
            else:  # read in place (LiteRT keeps no copy): the caller keeps ``data`` alive
                data = data if isinstance(data, bytes) else bytes(data)
                self._data = data
                address = ctypes.cast(c_char_p(data), c_void_p).value
                lib.check("LiteRtCreateModelFromBuffer", lib.environment, address, len(data), byref(self.model))
            lib.check("LiteRtCreateOptions", byref(self.options))
            lib.check("LiteRtSetOptionsHardwareAccelerators", self.options, _HW_CPU)
            toml = f"weight_cache_file_path = {_toml_string(weight_cache_path)}\n" if weight_cache_path else ""
            if num_threads:
                toml = f"num_threads = {int(num_threads)}\n" + toml
            if toml:
                self._add_cpu_options(toml)
            lib.check("LiteRtCreateCompiledModel", lib.environment, self.model, self.options, byref(self.handle))
            self._signatures = self._read_signatures()
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _destroy, lib, self.handle.value, self.options.value,
                                           self.model.value)
        self._finalizer.atexit = False  # a daemon thread may still be running it: the OS frees it all

    def _add_cpu_options(self, toml: str) -> None:
        text = toml.encode()
        payload = self.lib.malloc(len(text) + 1)  # LiteRT frees it with the options
        if not payload:
            raise RuntimeError("no memory for the runtime's options")
        ctypes.memmove(payload, text + b"\0", len(text) + 1)
        opaque = _H()
        status = self.lib.LiteRtCreateOpaqueOptions(_CPU_OPTIONS, payload, ctypes.cast(self.lib.free, c_void_p),
                                                    byref(opaque))
        if status:
            self.lib.free(payload)
            raise RuntimeError(f"LiteRtCreateOpaqueOptions failed ({status})")
        if self.lib.LiteRtAddOpaqueOptions(self.options, opaque):
            self.lib.LiteRtDestroyOpaqueOptions(opaque)
            raise RuntimeError("LiteRtAddOpaqueOptions failed")

    def _tensors(self, signature, count: str, name: str, tensor: str) -> dict:
        lib, number, found = self.lib, c_size_t(), {}
        lib.check(count, signature, byref(number))
        for i in range(number.value):
            key, handle, kind, ranked = c_char_p(), _H(), c_int(), _RankedType()
            lib.check(name, signature, i, byref(key))
            if not key.value:
                raise RuntimeError(f"a signature's tensor {i} has no name")
            lib.check(tensor, signature, i, byref(handle))
            lib.check("LiteRtGetTensorTypeId", handle, byref(kind))
            if kind.value != _RANKED:
                raise RuntimeError(f"tensor {key.value!r} has no fixed rank")
            lib.check("LiteRtGetRankedTensorType", handle, byref(ranked))
            if ranked.element_type not in _DTYPES:
                raise RuntimeError(f"tensor {key.value!r} has element type {ranked.element_type}")
            shape = [ranked.layout.dimensions[k] for k in range(ranked.layout.rank)]
            found[key.value.decode()] = {"name": key.value.decode(), "index": i, "element_type": ranked.element_type,
                                         "dtype": np.dtype(_DTYPES[ranked.element_type]).name, "shape": shape}
        return found

    def _read_signatures(self) -> dict:
        lib, count, signatures = self.lib, c_size_t(), {}
        lib.check("LiteRtGetNumModelSignatures", self.model, byref(count))
        for index in range(count.value):
            signature, key = _H(), c_char_p()
            lib.check("LiteRtGetModelSignature", self.model, index, byref(signature))
            lib.check("LiteRtGetSignatureKey", signature, byref(key))
            if not key.value:
                raise RuntimeError(f"signature {index} has no name")
            signatures[key.value.decode()] = {
                "index": index,
                "inputs": self._tensors(signature, "LiteRtGetNumSignatureInputs", "LiteRtGetSignatureInputName",
                                        "LiteRtGetSignatureInputTensorByIndex"),
                "outputs": self._tensors(signature, "LiteRtGetNumSignatureOutputs", "LiteRtGetSignatureOutputName",
                                         "LiteRtGetSignatureOutputTensorByIndex")}
        return signatures

    # -- what the engine uses of the wrapper's CompiledModel ------------------------------
    def get_signature_list(self) -> dict:
        return {name: {"inputs": list(s["inputs"]), "outputs": list(s["outputs"])} for name, s in self._signatures.items()}

    def get_input_tensor_details(self, signature: str) -> dict:
        return self._signatures[signature]["inputs"]

    def get_output_tensor_details(self, signature: str) -> dict:
        return self._signatures[signature]["outputs"]

    def _buffer(self, signature: str, name: str, side: str, requirement: str) -> Buffer:
        found = self._signatures.get(signature, {}).get(side, {}).get(name)
        if found is None:
            raise ValueError(f"signature {signature!r} has no {side[:-1]} {name!r}")
        requirements, size = _H(), c_size_t()
        self.lib.check(requirement, self.handle, self._signatures[signature]["index"], found["index"],
                       byref(requirements))  # owned by the compiled model
        self.lib.check("LiteRtGetTensorBufferRequirementsBufferSize", requirements, byref(size))
        buffer = Buffer(self.lib, requirements, found["element_type"], tuple(found["shape"]))
        if size.value < buffer.array.nbytes:
            raise RuntimeError(f"{name!r}: the runtime's buffer holds {size.value} bytes, not {buffer.array.nbytes}")
        return buffer

    def create_input_buffer_by_name(self, signature: str, name: str) -> Buffer:
        return self._buffer(signature, name, "inputs", "LiteRtGetCompiledModelInputBufferRequirements")

    def create_output_buffer_by_name(self, signature: str, name: str) -> Buffer:
        return self._buffer(signature, name, "outputs", "LiteRtGetCompiledModelOutputBufferRequirements")

    def run_by_name(self, signature: str, inputs: dict, outputs: dict) -> None:
        """Run ``signature`` on buffers by name (an input's buffer may also be an output's: updated
        in place); the GIL is released while it runs."""
        self.run_bound(self.bind(signature, inputs, outputs))

    def bind(self, signature: str, inputs: dict, outputs: dict) -> tuple:
        """``signature``'s buffers by name as the C arrays ``run_bound`` passes: made once, run many
        times. Holds no buffer: the caller keeps them alive while it runs the binding."""
        found = self._signatures.get(signature)
        if found is None:
            raise ValueError(f"no signature {signature!r}")
        try:
            ins = [inputs[name].handle for name in found["inputs"]]
            outs = [outputs[name].handle for name in found["outputs"]]
        except KeyError as e:
            raise ValueError(f"signature {signature!r} needs a buffer for {e.args[0]!r}") from None
        except AttributeError:
            raise ValueError("buffers from another binding cannot run on this model") from None
        return signature, found["index"], (_H * len(ins))(*ins), (_H * len(outs))(*outs)

    def run_bound(self, bound: tuple) -> None:
        """Run a ``bind``'s signature on its buffers; the GIL is released while it runs."""
        signature, index, ins, outs = bound
        with self._lock:
            if not self.handle:
                raise RuntimeError("the model is closed")
            status = self.lib.LiteRtRunCompiledModel(self.handle, index, len(ins), ins, len(outs), outs)
        if status:
            raise RuntimeError(f"running {signature!r} failed: {_STATUS.get(status, 'status')} ({status})")

    def close(self) -> None:
        with self._lock:  # after a running call; a waiting one then finds the model closed
            finalizer = getattr(self, "_finalizer", None)
            if finalizer is not None:
                finalizer()
            else:  # a failed constructor: what it made so far
                _destroy(self.lib, self.handle.value, self.options.value, self.model.value)
            self.handle = _H()


def _destroy(lib: _Library, handle, options, model) -> None:
    if handle:
        lib.LiteRtDestroyCompiledModel(handle)
    if options:
        lib.LiteRtDestroyOptions(options)  # with its options' payloads
    if model:
        lib.LiteRtDestroyModel(model)


def _toml_string(value) -> str:
    """A path as LiteRT's options text reads it: one pair of quotes, no escapes, one line."""
    value = os.fspath(value)
    if any(c in value for c in '\n\r"\\') or value != value.strip():
        raise ValueError(f"the runtime's options cannot carry the path {value!r}; choose another cache directory")
    return f'"{value}"'
