"""Compiled KAT with the overflow-safe forward decomposition against the bare direct formula (and the GELU
twin), timed in alternating rounds in one process: python benchmarks/decomposition_ab.py ARCH [MODE]."""
import os
import statistics
import sys

import torch

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), 'tools')]
import benchmark as B  # noqa: E402
import mmkat.ops.rational as gr  # noqa: E402

torch._inductor.config.fx_graph_cache = False  # the two decompositions trace to the same pre-decomposition graph
torch._functorch.config.enable_autograd_cache = False
safe = gr._reference_forward


def direct(x, wn, wd, groups):
    xg, a, babs = gr._grouped(x, wn, wd, groups)
    p, q = gr._direct_terms(xg, a, babs)
    return (p / q).reshape(x.shape).to(x.dtype)


arch, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else 'infer')
dev = torch.device('cuda')
runners = {}
for name, kind, fn in (('vit', 'vit', None), ('kat-safe', 'kat', safe), ('kat-direct', 'kat', direct)):
    if fn is not None:
        gr._reference_forward = fn
    torch.manual_seed(0)
    r = B.Runner(B.build(kind, arch, 224), mode, 'default', 128, 224, dev, torch.bfloat16)
    for _ in range(5):
        r.step()
    torch.cuda.synchronize()
    runners[name] = r
gr._reference_forward = safe
secs = {n: [] for n in runners}
for _ in range(7):
    for n, r in runners.items():
        secs[n].append(B.time_steps(r, 10))
vit = statistics.median(secs['vit'])
for n in runners:
    med = statistics.median(secs[n])
    print(f'{arch} {mode} {n:10s} {1280 / med:8.0f} img/s  {med * 100:6.2f} ms/step  {vit / med:.3f}x ViT', flush=True)
