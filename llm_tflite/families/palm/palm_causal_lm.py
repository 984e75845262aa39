"""``PaLMCausalLM``: the PaLM-style backbone plus the tied LM head, with cached generation."""

from __future__ import annotations

import keras
from keras import ops
from keras_hub.models import CausalLM

from llm_tflite.families.palm.palm_backbone import PaLMBackbone
from llm_tflite.families.palm.palm_causal_lm_preprocessor import PaLMCausalLMPreprocessor


@keras.saving.register_keras_serializable(package="llm_tflite")
class PaLMCausalLM(CausalLM):
    """A PaLM-style causal LM: ``fit``, ``generate``, ``save_to_preset``/``from_preset`` like any KerasHub task.

    Args:
        backbone: a ``PaLMBackbone``.
        preprocessor: a ``PaLMCausalLMPreprocessor`` or ``None`` (then feed token ids).

    Example:
        >>> lm = PaLMCausalLM.from_preset("palm_tiny_shakespeare_dir")  # doctest: +SKIP
        >>> lm.generate("ROMEO:", max_length=40)  # doctest: +SKIP
    """

    backbone_cls = PaLMBackbone
    preprocessor_cls = PaLMCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        outputs = backbone.token_embedding(backbone(inputs), reverse=True)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """Forward pass over ``token_ids`` ``[B, T]`` writing keys/values into ``cache`` at ``cache_update_index``.

        ``cache`` is ``[B, num_layers, 2, max_length, num_key_value_heads, head_dim]``.
        Returns ``(logits, hidden_states, cache)``.
        """
        x = self.backbone.token_embedding(token_ids)
        caches = []
        for i, block in enumerate(self.backbone.transformer_layers):
            x, layer_cache = block(x, cache=cache[:, i], cache_update_index=cache_update_index)
            caches.append(layer_cache)
        hidden_states = self.backbone.layer_norm(x)
        logits = self.backbone.token_embedding(hidden_states, reverse=True)
        return logits, hidden_states, ops.stack(caches, axis=1)

    def _build_cache(self, token_ids):
        backbone = self.backbone
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        shape = [batch, backbone.num_layers, 2, length, backbone.num_key_value_heads, backbone.head_dim]
        cache = ops.zeros(shape, dtype=self.compute_dtype)
        _, hidden_states, cache = self.call_with_cache(token_ids, cache, 0)
        return hidden_states, cache

    def generate_step(self, inputs, stop_token_ids=None):
        """One compiled batch of generation (the KerasHub contract; same steps as ``GPT2CausalLM``)."""
        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        hidden_states, cache = self._build_cache(token_ids)
        index = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))

        def next(prompt, cache, index):
            cache_update_index = index - 1
            prompt = ops.slice(prompt, [0, cache_update_index], [ops.shape(prompt)[0], 1])
            logits, hidden_states, cache = self.call_with_cache(prompt, cache, cache_update_index)
            return ops.squeeze(logits, axis=1), ops.squeeze(hidden_states, axis=1), cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=hidden_states,
            model=self,
        )
        if stop_token_ids is not None:
            from keras_hub.src.utils.tensor_utils import any_equal

            end_locations = ops.cast(any_equal(token_ids, stop_token_ids, ops.logical_not(padding_mask)), "int32")
            overflow = ops.cast(ops.cumsum(end_locations, axis=-1), "int32") - end_locations
            padding_mask = ops.logical_not(ops.cast(overflow, "bool"))
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}
