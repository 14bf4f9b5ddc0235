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
$PY -m pytest -q tests/train/test_attention.py -k "backend" -p no:cacheprovider 2>&1 | tail -15
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
# Hybrid models (issue 28): the native path (the rows as one row, seq_idx / cu_seqlens handed to
# flash-linear-attention, causal-conv1d and mamba-ssm) against each example alone through the same
# kernels, and its speed against the unpacked path (the CPU path, forced). Kernels not installed are
# named; the unpacked path is exact without them.
$PY - <<'PY'
import importlib.util, time, torch, transformers
import packer.train.hf.integration as hf
from packer.train.hf import mixers as M
from packer.train.hf.verify import tiny_config
hf.register(allow_unverified=True)
dev, dt = "cuda", torch.bfloat16
have = {m: importlib.util.find_spec(m) is not None for m in ("fla", "causal_conv1d", "mamba_ssm")}
print("hybrid kernels installed:", have)
lengths = [700, 130, 1024, 55, 400, 3, 1734]
for kind, mt in (("gated_delta_net", "qwen3_5_text"), ("mamba2", "falcon_h1"), ("conv", "lfm2")):
    missing = [m for m in M.NATIVE_NEEDS[kind] if not have[m]]
    if missing:
        print(f"{mt:14} native path skipped: install {', '.join(missing)} (pip install flash-linear-attention "
              "causal-conv1d mamba-ssm)"); continue
    cfg = tiny_config(mt, hidden_size=512, num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(dev, dt)
    model = hf.use_packer_attention(model, allow_unverified=True)
    ids = torch.randint(1, cfg.vocab_size, (1, sum(lengths)), device=dev)
    pos = torch.cat([torch.arange(n, device=dev) for n in lengths])[None]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    kw = dict(position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    with torch.no_grad():
        packed = model(input_ids=ids, **kw).logits.float()
        alone = torch.cat([model(input_ids=ids[:, a:b], position_ids=pos[:, a:b]).logits.float()
                           for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
    err = ((packed - alone).abs().max() / alone.abs().max()).item()
    def step():
        model(input_ids=ids, **kw).logits.float().logsumexp(-1).mean().backward()
    def timed():
        step(); torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(5): step()
        torch.cuda.synchronize(); return (time.perf_counter() - t) / 5
    native = timed()
    real_native = M._native
    M._native = lambda kind, hidden: False
    unpacked = timed()
    M._native = real_native
    print(f"{mt:14} native vs alone (bf16 logits, relative): {err:.2e}  fwd+bwd native {native*1e3:.1f} ms, "
          f"unpacked {unpacked*1e3:.1f} ms -> native {unpacked/native:.2f}x")
PY
