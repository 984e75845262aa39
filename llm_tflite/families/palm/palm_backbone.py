"""The PaLM-style backbone: tied token embedding, parallel decoder blocks, final bias-free norm."""

from __future__ import annotations

import keras
from keras_hub.layers import ReversibleEmbedding
from keras_hub.models import Backbone

from llm_tflite.families.palm.palm_decoder_block import PaLMDecoderBlock


@keras.saving.register_keras_serializable(package="llm_tflite")
class PaLMBackbone(Backbone):
    """A PaLM-style decoder: parallel attention + SwiGLU blocks, RoPE, multi-query attention, no biases.

    The token embedding is shared with the output layer (``token_embedding(x, reverse=True)``).

    Args:
        vocabulary_size: tokens in the SentencePiece vocabulary.
        num_layers: decoder blocks.
        num_query_heads: query heads per block.
        num_key_value_heads: key/value heads (1 = multi-query attention).
        hidden_dim: residual width; ``head_dim`` defaults to ``hidden_dim // num_query_heads``.
        intermediate_dim: SwiGLU width.
        max_sequence_length: the longest context the model is meant for (its training length).
        dropout: dropout while training.

    Example:
        >>> backbone = PaLMBackbone(vocabulary_size=64, num_layers=2, num_query_heads=4,
        ...     num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, max_sequence_length=32)
        >>> backbone.count_params()
        19552
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_query_heads,
        num_key_value_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=256,
        head_dim=None,
        rope_max_wavelength=10000,
        layer_norm_epsilon=1e-5,
        dropout=0.0,
        dtype=None,
        **kwargs,
    ):
        head_dim = head_dim or hidden_dim // num_query_heads
        self.token_embedding = ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=True,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=dtype,
            name="token_embedding",
        )
        self.transformer_layers = [
            PaLMDecoderBlock(
                hidden_dim=hidden_dim,
                num_query_heads=num_query_heads,
                num_key_value_heads=num_key_value_heads,
                head_dim=head_dim,
                intermediate_dim=intermediate_dim,
                rope_max_wavelength=rope_max_wavelength,
                layer_norm_epsilon=layer_norm_epsilon,
                dropout=dropout,
                dtype=dtype,
                name=f"decoder_block_{i}",
            )
            for i in range(num_layers)
        ]
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, center=False, dtype=dtype, name="final_layer_norm"
        )

        token_id_input = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask_input = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = self.token_embedding(token_id_input)
        for block in self.transformer_layers:
            x = block(x, padding_mask=padding_mask_input)
        sequence_output = self.layer_norm(x)
        super().__init__(
            inputs={"token_ids": token_id_input, "padding_mask": padding_mask_input},
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_dim = hidden_dim
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.rope_max_wavelength = rope_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "hidden_dim": self.hidden_dim,
                "head_dim": self.head_dim,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "rope_max_wavelength": self.rope_max_wavelength,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config


# KerasHub finds a preset's tokenizer class through ``backbone_cls``.
from llm_tflite.families.palm.palm_tokenizer import PaLMTokenizer  # noqa: E402

PaLMTokenizer.backbone_cls = PaLMBackbone
