"""JRM scoring cost: one prefill per candidate vs decoding a 256-token critique, at Qwen3-VL-8B size.

    python benchmarks/jrm_bench.py --size 8b --candidates 16 --image-size 448      # one H100
    python benchmarks/jrm_bench.py --size tiny --candidates 4 --new-tokens 16      # CPU smoke

Random weights (the cost does not depend on them); decoding is forced to the full length (min_new_tokens).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image

from rlkit.rewards.jrm.backbone import qwen3_vl_8b, tiny_backbone
from rlkit.rewards.jrm.model import JRMConfig, JRMModel


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "8b"], default="tiny")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = qwen3_vl_8b(device) if args.size == "8b" else tiny_backbone(0, args.image_size)
    backbone.image_processor.min_pixels = backbone.image_processor.max_pixels = args.image_size**2
    model = JRMModel(backbone, JRMConfig(image_size=args.image_size)).to(device).eval()
    n = args.candidates
    src = [Image.new("RGB", (args.image_size, args.image_size), (90, 120, 200))] * n
    edits = [Image.effect_noise((args.image_size, args.image_size), 40 + i).convert("RGB") for i in range(n)]
    text = ["make the sky purple and keep the house"] * n
    enc = model.encoder.encode(src, edits, text).to(device)
    with torch.no_grad():
        model(enc)  # warm-up
        sync(device)
        t = time.perf_counter()
        model.score(src, edits, text, batch_size=n)  # preprocessing + one prefill
        sync(device)
        t_score = time.perf_counter() - t
        t = time.perf_counter()
        model(enc)
        sync(device)
        t_prefill = time.perf_counter() - t
        end_id = backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
        gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   eos_token_id=end_id, pad_token_id=backbone.tokenizer.pad_token_id)
        t = time.perf_counter()
        out = model.vlm.generate(**enc.tensors, **gen)
        sync(device)
        t_gen = time.perf_counter() - t
    figures = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": args.size,
        "candidates": n, "image_size": args.image_size, "prompt_tokens": int(enc.tensors["input_ids"].shape[1]),
        "new_tokens": int(out.shape[1] - enc.tensors["input_ids"].shape[1]),
        "score_s_with_preprocessing": t_score, "prefill_s": t_prefill, "generate_s": t_gen,
        "generate_over_score": t_gen / t_score, "generate_over_prefill": t_gen / t_prefill,
    }
    if device.type == "cuda":
        figures["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
