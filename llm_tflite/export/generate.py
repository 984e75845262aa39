"""The ``generate`` export mode: tokenizer, decoding loop and sampler in one graph.

The file the Android autocomplete example loads as ``autocomplete.tflite``: signature
``serving_default``, input ``prompt`` (tf.string), output ``output_0`` (tf.string: prompt
plus continuation). It needs the Flex delegate and TF Text's custom ops at run time.

The graph itself is the family's ``generate_function``, which families build with
``llm_tflite.families.generate_graph.keras_generate_function`` (why it is traced as it is
is told there); this module holds the converter settings that turn it into a file.
"""

from __future__ import annotations

import tensorflow as tf


def configure_generate_converter(converter) -> None:
    """The converter settings of the published recipe: builtins + select TF ops + TF Text custom ops."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.allow_custom_ops = True
    converter.target_spec.experimental_select_user_tf_ops = ["UnsortedSegmentJoin", "UpperBound"]
    converter._experimental_guarantee_all_funcs_one_use = True
