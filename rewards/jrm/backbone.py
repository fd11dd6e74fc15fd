"""The JRM backbone: a transformers vision-language model plus its tokenizer and image processor.

`tiny_backbone()` builds Qwen3-VL at toy size with a byte-level tokenizer generated here (no downloads);
`load_backbone()` reads a real checkpoint (Qwen3-VL, Qwen2.5-VL) from a local folder or the hub cache.
Either way the `<|Reward|>` token is added to the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlkit.core.errors import UserError
from rlkit.core.tiny_tokenizers import qwen_byte_tokenizer

REWARD_TOKEN = "<|Reward|>"


@dataclass
class Backbone:
    model: PreTrainedModel  # a *ForConditionalGeneration VLM (has an LM head, for rationales and critiques)
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any  # Qwen2VLImageProcessor-style: images -> pixel_values, image_grid_thw
    kind: str  # "qwen3_vl" | "qwen2_5_vl"

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "text_config", cfg).hidden_size

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)


def tiny_backbone(seed: int = 0, image_size: int = 32, hidden: int = 64, layers: int = 2, patch: int = 8) -> Backbone:
    """Qwen3-VL at toy size: by default 2 text layers (hidden 64) and a 2-block vision tower (patch 8), ~0.3M
    parameters. Heads are 16 wide; the vision tower is half as wide as the text model."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = qwen_byte_tokenizer((REWARD_TOKEN,))
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 16,
                         num_key_value_heads=max(1, hidden // 32), head_dim=16, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True},
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=hidden // 2, intermediate_size=hidden, num_heads=2, patch_size=patch,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                           num_position_embeddings=max(64, (image_size // patch) ** 2), deepstack_visual_indexes=[0]),
        **ids,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg)
    processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                      min_pixels=image_size * image_size, max_pixels=image_size * image_size)
    return Backbone(model, tok, processor, "qwen3_vl")


def load_backbone(path: str, dtype: torch.dtype = torch.bfloat16) -> Backbone:
    """A Qwen3-VL / Qwen2.5-VL checkpoint from a local folder or the local hub cache (never downloads)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    except OSError:
        raise UserError(f"backbone '{path}' is not a local folder nor in the local hub cache; download it first "
                        f"(`hf download {path}`) or point backbone.pretrained to a folder") from None
    kind = config.model_type
    if kind not in ("qwen3_vl", "qwen2_5_vl"):
        raise UserError(f"backbone '{path}' is a {kind}; JRM supports qwen3_vl and qwen2_5_vl")
    if REWARD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        model.resize_token_embeddings(len(tokenizer))
    return Backbone(model, tokenizer, image_processor, kind)


def qwen3_vl_8b(device) -> Backbone:
    """Qwen3-VL-8B-Instruct's architecture (public config.json values) with random bf16 weights: for
    benchmarks, where the cost does not depend on the weights."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = qwen_byte_tokenizer((REWARD_TOKEN,))
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096,
                           num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
        tie_word_embeddings=False, **ids)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(default)
    processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    return Backbone(model.eval(), tok, processor, "qwen3_vl")
