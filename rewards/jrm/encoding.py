"""Turn (source, edited, instruction[, rationale]) into the JRM token sequence.

    <|im_start|>user
    <|vision_start|>[source tokens]<|vision_end|><|vision_start|>[edited tokens]<|vision_end|>RUBRIC<|im_end|>
    <|im_start|>assistant
    <|Reward|>RATIONALE<|im_end|>                      layout score_first (JRM)
    RATIONALE<|im_end|><|Reward|>                      layout rationale_first (DeScore, Z-Reward's teacher)

The reward is read from the last hidden state at `<|Reward|>`. In score_first the rationale comes after it,
so under causal attention the score cannot see the rationale: training (with rationale) and scoring (without)
give the same number. In rationale_first the score reads the rationale (given, or generated first); without
one the sequence ends `assistant\n<|Reward|>` (a masked rationale). Image placeholder tokens are expanded
to the count the image processor's grid implies, as the Qwen-VL processors do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rlkit.rewards.jrm.backbone import REWARD_TOKEN, Backbone

RUBRIC = (
    "You judge an image edit. The first image is the source, the second is the edited result. "
    "Instruction: {instruction}\n"
    "Judge how well the instruction is followed and whether everything else is preserved."
)


def to_pil(image, size: int) -> Image.Image:
    """PIL image, or a [3, H, W] float tensor in [0, 1], to an RGB PIL image of size x size."""
    if isinstance(image, torch.Tensor):
        array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


@dataclass
class Encoded:
    tensors: dict[str, torch.Tensor]  # model inputs: input_ids, attention_mask, mm_token_type_ids, pixel_values, ...
    reward_pos: torch.Tensor  # [B] index of <|Reward|> in each row
    labels: torch.Tensor | None  # [B, L] rationale token ids, -100 elsewhere (None without rationales)
    # With deduplication, pixel_values holds each distinct image once (a group's shared source is encoded
    # once); image_slots maps every image slot of the text to its row in unique_grid_thw.
    image_slots: torch.Tensor | None = None
    unique_grid_thw: torch.Tensor | None = None

    def to(self, device) -> Encoded:
        def move(t):
            return None if t is None else t.to(device)

        return Encoded({k: v.to(device) for k, v in self.tensors.items()}, self.reward_pos.to(device),
                       move(self.labels), move(self.image_slots), move(self.unique_grid_thw))


LAYOUTS = ("score_first", "rationale_first")


class JRMEncoder:
    def __init__(self, backbone: Backbone, image_size: int, rubric: str = RUBRIC, layout: str = "score_first"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.tok, self.image_processor = backbone.tokenizer, backbone.image_processor
        self.merge = backbone.merge_size
        self.image_size, self.rubric = image_size, rubric
        self.reward_id = self.tok.convert_tokens_to_ids(REWARD_TOKEN)
        self.image_token_id = self.tok.convert_tokens_to_ids("<|image_pad|>")
        self.end = "<|im_end|>"

    def prefix(self, instruction: str, n_src: int, n_edit: int) -> str:
        """Everything before the assistant's answer (ends with `<|Reward|>` in score_first)."""
        img = "<|vision_start|>{}<|vision_end|>"
        head = ("<|im_start|>user\n" + img.format("<|image_pad|>" * n_src) + img.format("<|image_pad|>" * n_edit)
                + self.rubric.format(instruction=instruction) + f"{self.end}\n<|im_start|>assistant\n")
        return head + REWARD_TOKEN if self.layout == "score_first" else head

    def encode(self, sources: list, edited: list, instructions: list[str],
               rationales: list[str | None] | None = None, dedupe: bool = False) -> Encoded:
        """Batch of B sequences. With ``rationales``, labels mark the rationale tokens (and the end token).
        With ``dedupe``, identical images (by content) go through the vision tower once."""
        images = []
        for s, e in zip(sources, edited):
            images += [to_pil(s, self.image_size), to_pil(e, self.image_size)]
        slots, unique_grid = None, None
        if dedupe:
            keys = [hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in images]
            row_of = {k: r for r, k in enumerate(dict.fromkeys(keys))}  # first appearance order
            first_index = {k: keys.index(k) for k in row_of}
            slots = torch.tensor([row_of[k] for k in keys])
            unique = self.image_processor(images=[images[first_index[k]] for k in row_of], return_tensors="pt")
            unique_grid = unique["image_grid_thw"]
            vision = {"pixel_values": unique["pixel_values"], "image_grid_thw": unique_grid[slots]}
        else:
            vision = self.image_processor(images=images, return_tensors="pt")
        counts = (vision["image_grid_thw"].prod(dim=-1) // (self.merge**2)).tolist()
        rows, label_rows, reward_pos = [], [], []
        for i, instruction in enumerate(instructions):
            ids = self.tok(self.prefix(instruction, counts[2 * i], counts[2 * i + 1]), add_special_tokens=False)
            ids = list(ids["input_ids"])
            labels = [-100] * len(ids)
            if self.layout == "score_first":  # the prefix ends with <|Reward|>
                reward_pos.append(len(ids) - 1)
            if rationales is not None and rationales[i]:
                tail = list(self.tok(rationales[i] + self.end, add_special_tokens=False)["input_ids"])
                ids += tail
                labels += tail
            if self.layout == "rationale_first":  # <|Reward|> reads the rationale before it
                ids.append(self.reward_id)
                labels.append(-100)
                reward_pos.append(len(ids) - 1)
            rows.append(ids)
            label_rows.append(labels)
        length = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, label_rows)):  # right padding: the reward position stays put
            input_ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
            labels[i, : len(lab)] = torch.tensor(lab)
        tensors = {
            "input_ids": input_ids, "attention_mask": attention,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
            "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"],
        }
        has_rationale = rationales is not None and any(rationales)
        assert all(input_ids[i, p] == self.reward_id for i, p in enumerate(reward_pos))
        return Encoded(tensors, torch.tensor(reward_pos), labels if has_rationale else None, slots, unique_grid)
