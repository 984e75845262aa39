"""NumPy views of the runtime's CPU tensor buffers, through LiteRT's C API.

``ai_edge_litert``'s ``TensorBuffer`` copies a whole buffer on every ``read`` and ``write``: a new
sequence's zeroed caches cost a write of all of them (GPT-2 124M at 1,024 tokens: 75 MB, about
as long as its first prompt chunk takes), a fork a read and a write. The runtime keeps a CPU
buffer in host memory, which ``LiteRtGetTensorBufferHostMemory`` (LiteRT's stable C API,
``libLiteRt.so`` beside the Python wrapper) gives the address of: a view over it lets the
engine clear only the slots a sequence wrote and copy caches with one ``memcpy``.

The Python wrapper carries its own copy of LiteRT (``libpywrap_litert_common.so`` exports none of
the C API), so its buffers are read by ``libLiteRt.so`` of the same wheel, which works as long as
the two copies agree on the buffer's layout. So every step is checked: the capsule's name, the
calls' status, the buffer's size against the tensor's bytes (before any address is used), and,
once in a process, a pattern written through ``TensorBuffer.write`` must read back through the
view. Anything unexpected gives None, and the engine copies through ``TensorBuffer`` as before.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

_CAPSULE = b"LiteRtTensorBuffer"
_api = None
_read_back = False  # a pattern written through TensorBuffer has read back through a view


def _load():
    """The C functions, or False where they are not there (another runtime build)."""
    global _api
    if _api is None:
        try:
            import ai_edge_litert

            lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))
            host, size = lib.LiteRtGetTensorBufferHostMemory, lib.LiteRtGetTensorBufferSize
            host.restype = size.restype = ctypes.c_int
            host.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
            size.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
            name, pointer = ctypes.pythonapi.PyCapsule_GetName, ctypes.pythonapi.PyCapsule_GetPointer
            name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
            pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            _api = (host, size, name, pointer)
        except (OSError, AttributeError, ImportError):
            _api = False
    return _api


def host_view(buffer, shape, dtype) -> np.ndarray | None:
    """A writable view ``shape``/``dtype`` of ``buffer``'s host memory (valid while ``buffer`` lives), or
    None. What the buffer holds is undefined (a test pattern, the first time): clear it."""
    own = getattr(buffer, "array", None)  # a buffer of LiteRT's C API (runtime/native.py) is its view
    if own is not None:  # the same bytes in another shape (a ring stored context-shaped) is a view too
        same = own.size == int(np.prod(shape)) and own.dtype == np.dtype(dtype) and own.flags.c_contiguous
        return own.reshape(shape) if same else None
    api = _load()
    if not api:
        return None
    host, size, name, pointer = api
    capsule = getattr(buffer, "capsule", None)
    try:
        if capsule is None or name(capsule) != _CAPSULE:
            return None
        handle = pointer(capsule, _CAPSULE)
    except (TypeError, ValueError):
        return None
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    address, length = ctypes.c_void_p(), ctypes.c_size_t()
    if not handle or size(handle, ctypes.byref(length)) != 0 or length.value != nbytes:
        return None
    if host(handle, ctypes.byref(address)) != 0 or not address.value:
        return None
    global _read_back
    view = np.frombuffer((ctypes.c_char * nbytes).from_address(address.value), dtype).reshape(shape)
    if not _read_back:
        pattern = (np.arange(view.size) % 127 + 1).astype(dtype).reshape(shape)
        buffer.write(pattern)
        if not np.array_equal(view, pattern):
            return None
        _read_back = True
    return view
