#!/usr/bin/env bash
# GPU check (under 5 minutes on one CUDA GPU): every attention backend against the sdpa reference in
# bf16, forward and backward, plain and with a sliding window and soft-capping (the variants each
# backend implements), then packed varlen vs padded SDPA timings. Prints everything to stdout.
#   bash benchmarks/gpu_check.sh            (needs torch with CUDA; flash-attn optional)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -m pytest -q tests/test_attention.py -k "backend" -p no:cacheprovider 2>&1 | tail -15
$PY - <<'PY'
import time, torch
from packer.train.attention import BACKENDS, unavailable, varlen_attention
torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
lens = torch.randint(64, 1024, (64,))
cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32).to(dev)
T, H, K, D = int(lens.sum()), 16, 4, 128
q, k, v = (torch.randn(T, h, D, device=dev, dtype=dt, requires_grad=True) for h in (H, K, K))
ref = varlen_attention(q.float(), k.float(), v.float(), cu, int(lens.max()), backend="sdpa")
def bench(fn, n=10):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n
# padded SDPA baseline: every sequence padded to the longest, dense causal mask per row
B, S = len(lens), int(lens.max())
qp, kp, vp = (torch.randn(B, h, S, D, device=dev, dtype=dt, requires_grad=True) for h in (H, K, K))
def padded():
    o = torch.nn.functional.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
    o.sum().backward()
base = bench(padded)
print(f"padded SDPA fwd+bwd: {base*1e3:.2f} ms ({T} real tokens, {B*S} padded)")
from packer.train.attention import SUPPORTS, Variant, unsupported
g = torch.randn(T, H, D, device=dev, dtype=torch.float32)
for variant in ({}, {"window": 256}, {"softcap": 30.0}, {"window": 256, "softcap": 30.0}):
    qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    ref = varlen_attention(qf, kf, vf, cu, int(lens.max()), backend="sdpa", **variant)
    ref.backward(g)
    label = "+".join(variant) or "plain"
    for name in BACKENDS:
        why = unavailable(name, q, True) or unsupported(name, Variant(**variant))
        if why:
            print(f"{label:15} {name:13} skipped: {why}"); continue
        for t in (q, k, v):
            t.grad = None
        out = varlen_attention(q, k, v, cu, int(lens.max()), backend=name, **variant)
        out.backward(g.to(out.dtype))
        err = (out.float() - ref).abs().max().item()
        gerr = max((a.grad.float() - b.grad).abs().max().item() for a, b in zip((q, k, v), (qf, kf, vf)))
        def step():
            o = varlen_attention(q, k, v, cu, int(lens.max()), backend=name, **variant); o.sum().backward()
        t = bench(step)
        print(f"{label:15} {name:13} max|diff| vs fp32 sdpa: out {err:.3e} grads {gerr:.3e}  "
              f"fwd+bwd {t*1e3:.2f} ms  {base/t:.2f}x padded SDPA")
PY
