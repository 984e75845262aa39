"""Training checkpoints: every variable of the model and the optimizer, and the step, every N steps.

A checkpoint is a folder holding ``state.npz`` (every variable, in order: the model's, LoRA adapters
and dropout seeds included, and the optimizer's, its step counter included; read back with
``allow_pickle=False``) and ``step.json``. It is written beside the old one and renamed over it, so a
run stopped at any moment leaves the previous checkpoint whole. Resuming restores every variable and
skips the batches already trained on: the run then goes on as if it had never stopped (same batches,
same learning-rate schedule; the test checks the weights against an uninterrupted run).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from llm_tflite.errors import DataError

STATE = "state.npz"
STEP = "step.json"


def _variables(model) -> dict:
    """Every variable, named by its place: paths carry per-process counters (``seed_generator_7``, ``adam_1``)."""
    found = {f"model_{i:05d}": v for i, v in enumerate(model.variables)}
    found.update({f"optimizer_{i:05d}": v for i, v in enumerate(model.optimizer.variables)})
    return found


def save(directory, model, step: int, fingerprint: dict) -> None:
    """Write the checkpoint of ``step`` into ``directory`` (replacing the last one whole)."""
    partial = os.fspath(directory) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    np.savez(os.path.join(partial, STATE), **{name: np.asarray(v) for name, v in _variables(model).items()})
    with open(os.path.join(partial, STEP), "w", encoding="utf-8") as f:
        json.dump({"step": int(step), **fingerprint}, f)
    old = os.fspath(directory) + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(directory):
        os.rename(directory, old)
    os.rename(partial, directory)
    shutil.rmtree(old, ignore_errors=True)


def restore(directory, model, fingerprint: dict, total_steps: int) -> int:
    """Load the checkpoint in ``directory`` into ``model`` (compiled, optimizer built); return its step."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory) and os.path.isdir(directory + ".old"):
        directory += ".old"  # stopped between save's two renames: the previous checkpoint is whole
    try:
        with open(os.path.join(directory, STEP), encoding="utf-8") as f:
            saved = json.load(f)
        state = np.load(os.path.join(directory, STATE), allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"no checkpoint in {directory!r} to resume from; run without --resume "
                        "to start (with --checkpoint-every N)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"the checkpoint in {directory!r} is unreadable ({e}); delete it and start "
                        "again without --resume") from None
    step = saved.get("step") if isinstance(saved, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise DataError(f"the checkpoint in {directory!r} names no step within the run's {total_steps} "
                        "(step.json); delete it and start again without --resume")
    different = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if different:
        changes = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in different.items())
        raise DataError(f"the checkpoint in {directory!r} comes from another run ({changes}); resume with the same "
                        "model, data and settings, or start again without --resume")
    variables = _variables(model)
    if set(variables) != set(state.files):
        raise DataError(f"the checkpoint in {directory!r} holds other variables than this model and "
                        "optimizer (another LoRA rank or model?); start again without --resume")
    for name, variable in variables.items():
        value = state[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise DataError(f"the checkpoint's {name} has shape {value.shape}, the model's {tuple(variable.shape)}; "
                            "start again without --resume")
        variable.assign(value)
    return step


def Saver(directory, every: int, fingerprint: dict, first_step: int = 0, write: bool = True):
    """A Keras callback writing a checkpoint every ``every`` steps (counted from the run's start), and
    where training stops early (a time limit), so that ``--resume`` goes on from there. ``write``:
    False on every host but the first of several."""
    import keras

    class Checkpoints(keras.callbacks.Callback):
        step = first_step

        def on_train_batch_end(self, batch, logs=None):
            self.step = first_step + batch + 1
            if write and self.step % every == 0:
                save(directory, self.model, self.step, fingerprint)

        def on_train_end(self, logs=None):
            if write and self.step % every and self.step < fingerprint["total_steps"]:
                save(directory, self.model, self.step, fingerprint)

    return Checkpoints()
