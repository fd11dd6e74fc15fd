"""A real OpenAI-compatible judge server for tests: `transformers serve` on 127.0.0.1 with a tiny LLaVA (random
weights, a byte-level tokenizer made here) saved to a folder. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_vlm(path: Path, seed: int = 0) -> Path:
    """LLaVA at toy size (CLIP vision 2 x 32 wide, Qwen2 text 2 x 64 wide, ~0.14M parameters) with its processor."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    from rlkit.core.tiny_tokenizers import qwen_byte_tokenizer

    tok = qwen_byte_tokenizer(("<|Reward|>",))  # the vocabulary these random weights were drawn for
    tok.add_special_tokens({"extra_special_tokens": ["<image>"]})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, image_token="<image>",
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def digit_bias(path: Path, digits: str = "012345", bias: float = 100.0) -> dict[str, float]:
    """OpenAI `logit_bias` that makes the tiny model answer with these digits (which one still depends on the
    images it is shown): token ids as strings."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return {str(tok.convert_tokens_to_ids(d)): bias for d in digits}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_transformers_serve(model: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`transformers serve MODEL` on 127.0.0.1 at a free port; returns once /v1/models answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(cli), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                json.loads(r.read())
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("transformers serve did not answer within the timeout")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def forced_answer(path: Path, text: str) -> dict:
    """Request fields (transformers serve's `generation_config`) that make the tiny model answer exactly `text`:
    a sequence bias on every prefix of the answer, larger for longer prefixes, so the longest match leads."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    bias = [[ids[: i + 1], 100.0 + 10.0 * i] for i in range(len(ids))]
    return {"generation_config": json.dumps({"sequence_bias": bias})}
