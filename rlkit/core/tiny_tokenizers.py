"""Tokenizers for the tiny models of tests, the sandbox and the demo, generated in memory (no downloads): a
byte-level CLIP BPE with no merges, a character-level T5 unigram, a byte-level Qwen2 vocabulary with the chat
and vision specials. The tiny editors (rlkit.policies.tiny), the tiny JRM backbone and the sandbox's editor
all build on them."""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, Qwen2TokenizerFast, T5TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE over the 256 byte symbols (with and without the end-of-word mark), no merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = list(bytes_to_unicode().values())
    for suffix in ("", "</w>"):
        for s in symbols:
            vocab[s + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """Character-level unigram vocabulary: lowercase, digits, punctuation, word-start variants."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.5) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def qwen_byte_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A byte-level Qwen2 tokenizer (no merges) with the chat/vision specials (and ``extra_specials``, e.g. the
    JRM's reward token)."""
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    for s in ["<|endoftext|>", *CHAT_SPECIALS, *extra_specials]:
        vocab[s] = len(vocab)
    return Qwen2TokenizerFast(vocab=vocab, merges=[], additional_special_tokens=[*CHAT_SPECIALS, *extra_specials],
                              model_max_length=2048)
