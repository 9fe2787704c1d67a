"""Training throughput of KAT against the ViT of the same size (images/s), as users train them.

Each model is the KAT backbone (mlp='kan', the compiled group-rational op) or its GELU twin (mlp='gelu',
the plain ViT) with a 1000-class linear head, trained with AdamW under bf16 autocast on random 224 px
images; with --timm, timm's own ViT of the same size is timed too as an outside reference. Prints a table and
writes JSON (an existing file is kept: the new one gets a time-stamped name).

    python tools/benchmark_train.py --archs tiny small base --batch-size 128 --out benchmarks/results/train_h200.json
"""
import argparse
import datetime
import os
import platform
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmkat.models import KAT  # noqa: E402
from mmkat.ops import extension_info  # noqa: E402
from mmkat.utils import save_results  # noqa: E402

DIMS = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


class Classifier(nn.Module):

    def __init__(self, backbone: nn.Module, dims: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dims, 1000)

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


def build(kind: str, arch: str, impl: str) -> nn.Module:
    dims, heads = DIMS[arch]
    if kind == 'timm-vit':
        import timm
        return timm.models.vision_transformer.VisionTransformer(
            img_size=224, patch_size=16, embed_dim=dims, depth=12, num_heads=heads, num_classes=1000)
    mlp = 'kan' if kind == 'kat' else 'gelu'
    rational = dict(impl=impl) if mlp == 'kan' else None
    return Classifier(KAT(arch, mlp=mlp, rational=rational, drop_path_rate=0.1), dims)


def time_training(model: nn.Module, batch: int, steps: int, warmup: int, device: torch.device,
                  dtype: torch.dtype) -> dict:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = dict(images_per_s=batch * steps / elapsed, ms_per_step=1e3 * elapsed / steps,
                  final_loss=float(loss))
    if device.type == 'cuda':
        result['peak_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', nargs='+', default=['tiny', 'small', 'base'], choices=sorted(DIMS))
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float16', 'float32'])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--impl', default='compiled', choices=['compiled', 'reference', 'auto'],
                        help='group-rational implementation of the KAT rows')
    parser.add_argument('--timm', action='store_true', help="also time timm's VisionTransformer")
    parser.add_argument('--out', help='JSON file for the results')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    kinds = ['vit', 'kat'] + (['timm-vit'] if args.timm else [])
    rows = []
    for arch in args.archs:
        for kind in kinds:
            torch.manual_seed(0)
            model = build(kind, arch, args.impl)
            params = sum(p.numel() for p in model.parameters())
            result = time_training(model, args.batch_size, args.steps, args.warmup, device, dtype)
            rows.append(dict(arch=arch, model=kind, params=params, **result))
            print(f'{arch:5s} {kind:8s} {result["images_per_s"]:9.1f} img/s', flush=True)
            del model
            if device.type == 'cuda':
                torch.cuda.empty_cache()

    print(f'\n| model | params | train images/s | vs ViT | ms/step | peak GiB |\n|---|---|---|---|---|---|')
    for row in rows:
        vit = next(r for r in rows if r['arch'] == row['arch'] and r['model'] == 'vit')
        name = {'vit': 'ViT (mmkat, mlp=gelu)', 'kat': 'KAT (mmkat)', 'timm-vit': 'ViT (timm)'}[row['model']]
        print(f'| {name} {row["arch"]} | {row["params"] / 1e6:.2f} M | {row["images_per_s"]:.0f} | '
              f'{row["images_per_s"] / vit["images_per_s"]:.2f} | {row["ms_per_step"]:.1f} | '
              f'{row.get("peak_mem_gib", float("nan")):.1f} |')

    meta = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), torch=torch.__version__,
                device=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor(),
                batch_size=args.batch_size, dtype=args.dtype, steps=args.steps, warmup=args.warmup,
                impl=args.impl, extension=extension_info(), command=' '.join(sys.argv))
    if args.out:
        save_results(args.out, dict(meta=meta, rows=rows))


if __name__ == '__main__':
    main()
