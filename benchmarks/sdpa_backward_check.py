"""Does scaled-dot-product attention's backward run on this GPU, per backend? (The default backend crashed in
backward under gradient checkpointing on an H100 with torch 2.11 / cuDNN 9.19: BENCHMARKS.md.) Each backend runs
in its own process, since an illegal memory access poisons the CUDA context.

    python benchmarks/sdpa_backward_check.py
"""

import subprocess
import sys

CHILD = """
import sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
name = sys.argv[1]
q, k, v = (torch.randn(2, 24, 2560, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
ctx = sdpa_kernel(backends[name]) if backends[name] is not None else torch.enable_grad()
with ctx:
    for _ in range(3):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out.float().square().mean().backward()
torch.cuda.synchronize()
print("ok", float(q.grad.float().abs().mean()))
"""

if __name__ == "__main__":
    for name in ("default", "flash", "efficient", "cudnn", "math"):
        r = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True, timeout=300)
        last = (r.stdout.strip() or r.stderr.strip()).splitlines()[-1:] or [""]
        print(f"{name:10s} {'OK  ' if r.returncode == 0 else 'FAIL'} {last[0][:150]}")
