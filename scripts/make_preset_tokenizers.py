"""Regenerate llm_tflite/presets/tokenizers/ (run from the repository root with ../shared beside it).

gemma_style.model: a unigram SentencePiece model of 4,096 pieces trained on tiny Shakespeare the
way Gemma's tokenizer is made (byte fallback, no normalization, Gemma's special pieces), which
random-weight Gemma 3 models grow to their 262,144 ids. Qwen 3 and Llama 3 models borrow the
shipped GPT-2 tokenizer instead (llm_tflite.families.presets.borrowed_bpe).
"""

import pathlib

from llm_tflite.families.presets import GEMMA_TOKENIZER
from llm_tflite.tokenizers.spm_training import train_byte_fallback_sentencepiece

text = pathlib.Path("../shared/data/tinyshakespeare/input.txt").read_text(encoding="utf-8")
proto = train_byte_fallback_sentencepiece([p + "\n\n" for p in text.split("\n\n")], 4096)
pathlib.Path(GEMMA_TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path(GEMMA_TOKENIZER).write_bytes(proto)
print(GEMMA_TOKENIZER, len(proto), "bytes")
