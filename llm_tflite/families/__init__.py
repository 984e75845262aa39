"""Model families: the ``ModelFamily`` interface (``base``), GPT-2, PaLM-style, named presets, TF building blocks."""
