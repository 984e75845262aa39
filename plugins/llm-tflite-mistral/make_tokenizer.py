"""Regenerate llm_tflite_mistral/tokenizer.model (run from the repository root with ../shared beside it).

Llama-style settings (Mistral uses Llama's tokenizer): BPE with byte fallback (newlines and unseen characters become
<0x..> byte pieces), no normalization, <unk>=0, <s>=1, </s>=2.
"""

import io
import pathlib

import sentencepiece as spm

text = pathlib.Path("../shared/data/tinyshakespeare/input.txt").read_text(encoding="utf-8")[:200_000]
model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(p + "\n\n" for p in text.split("\n\n")), model_writer=model, vocab_size=1000,
    model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
)
pathlib.Path(__file__).with_name("llm_tflite_mistral").joinpath("tokenizer.model").write_bytes(model.getvalue())
