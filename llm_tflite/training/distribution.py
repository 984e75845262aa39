"""Training on several devices and hosts through Keras' own distribution API (JAX backend).

``data``: ``keras.distribution.DataParallel`` over every device, each batch split across them.
``model``: ``keras.distribution.ModelParallel`` over a ``DeviceMesh`` of shape ``(batch, model)``,
the big matrices sharded by a layout map: the backbone's own (``get_layout_map``: Gemma, Llama,
Qwen) or, for GPT-2 and others that name their layers the same way, ``standard_layout_map``.

Several hosts: one process per host, each started with the usual variables, which
``keras.distribution.initialize`` reads (``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``); docs/training.md has
the commands.
"""

from __future__ import annotations

import os

from llm_tflite.console import logger, threads_for_cpu_devices, xla_cpu_threads
from llm_tflite.errors import InvalidArgumentError, UnsupportedRuntimeError

DISTRIBUTIONS = ("data", "model")


def several_hosts() -> bool:
    """True in one of several processes started for multi-host training (``KERAS_DISTRIBUTION_NUM_PROCESSES``)."""
    try:
        return int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1
    except ValueError:
        raise InvalidArgumentError("KERAS_DISTRIBUTION_NUM_PROCESSES must be a number of processes") from None


def first_host() -> bool:
    """True in a single process, or in the first of several (``KERAS_DISTRIBUTION_PROCESS_ID`` 0): the one
    that writes presets and checkpoints."""
    return not several_hosts() or os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0").strip() == "0"


def parse_mesh(text: str) -> tuple[int, int]:
    """``"1x2"`` -> ``(1, 2)``: batch by model."""
    try:
        batch, model = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise InvalidArgumentError(f"mesh must be BATCHxMODEL, such as 1x2, not {text!r}") from None
    if batch < 1 or model < 1:
        raise InvalidArgumentError(f"mesh sizes must be at least 1, not {text!r}")
    return batch, model


def standard_layout_map(keras, mesh, model_dim: str = "model", data_dim: str = "batch"):
    """Shard the embedding, attention and feed-forward kernels of a KerasHub decoder whose layers
    carry the usual names (``token_embedding``, ``query``/``key``/``value``, ``attention_output``,
    ``feedforward_*_dense``): what ``LlamaBackbone.get_layout_map`` does, for GPT-2 too."""
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["token_embedding/embeddings"] = (model_dim, data_dim)
    layout_map["transformer_layer.*self_attention.*(query|key|value).kernel"] = (model_dim, data_dim, None)
    layout_map["transformer_layer.*attention_output.kernel"] = (model_dim, None, data_dim)
    layout_map["transformer_layer.*feedforward_(intermediate|gate)_dense.kernel"] = (data_dim, model_dim)
    layout_map["transformer_layer.*feedforward_output_dense.kernel"] = (model_dim, data_dim)
    return layout_map


def _warn_if_cpu_devices_lack_threads(devices) -> None:
    """Several CPU devices on too few XLA threads can abort mid-training (``console.threads_for_cpu_devices``);
    ``console.import_keras`` prevents it unless JAX made its CPU client before llm-tflite saw it."""
    needed = threads_for_cpu_devices(len(devices))
    if len(devices) > 1 and all(str(d).startswith("cpu") for d in devices) and xla_cpu_threads() < needed:
        logger.warning("%d CPU devices on %d XLA threads can deadlock in a collective (XLA then aborts after 40 s): "
                       "set NPROC=%d before JAX starts (before anything in this process uses JAX)",
                       len(devices), xla_cpu_threads(), needed)


def make_distribution(keras, kind: str, *, mesh=None, backbone_class=None, batch_size: int | None = None):
    """A ``keras.distribution`` for ``kind`` (``"data"`` or ``"model"``), on every device there is."""
    if kind not in DISTRIBUTIONS:
        raise InvalidArgumentError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {kind!r}")
    if keras.backend.backend() != "jax":
        raise UnsupportedRuntimeError(f"--distribution runs on the JAX backend (Keras' distribution API), not "
                                      f"{keras.backend.backend()!r}: use --backend jax (KERAS_BACKEND=jax)")
    if several_hosts():
        keras.distribution.initialize()  # several hosts: the coordinator and this process' id from the environment
    devices = keras.distribution.list_devices()
    _warn_if_cpu_devices_lack_threads(devices)
    if kind == "data":
        if batch_size is not None and batch_size % len(devices):
            raise InvalidArgumentError(f"data parallelism splits each batch over {len(devices)} devices: make "
                                       f"--batch-size a multiple of {len(devices)} (it is {batch_size})")
        return keras.distribution.DataParallel(devices=devices)
    batch, model = parse_mesh(mesh or f"1x{len(devices)}")
    if batch * model != len(devices):
        raise InvalidArgumentError(f"a {batch}x{model} mesh needs {batch * model} devices; there are {len(devices)} "
                                   f"({', '.join(devices)})")
    device_mesh = keras.distribution.DeviceMesh(shape=(batch, model), axis_names=("batch", "model"), devices=devices)
    own = getattr(backbone_class, "get_layout_map", None)
    layout_map = own(device_mesh) if own is not None else standard_layout_map(keras, device_mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
