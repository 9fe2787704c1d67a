"""Training speed and peak memory of a detection or segmentation config, KAT against its GELU-MLP twin.

For each variant the model and the optimizer wrapper (AMP, layer decay, ...) are built from the config exactly
as tools/train.py builds them, and full training steps (data preprocessor, loss forward, backward, optimizer
step) run on synthetic batches of the config's training size: random images, for detectors random boxes
with box-shaped masks, for segmentors random label maps. Data loading is left out, so the numbers are the
model's. The backbone starts from its init (no checkpoint is read). Prints a table; ``--out FILE`` appends the
run (rows, settings, command, machine, versions, date) to the data file FILE (mmkat/utils/results.py: one file
per benchmark and machine, earlier runs kept, a file of another benchmark or machine refused).

    python tools/benchmark_config.py configs/kat/mask_rcnn_kat_s.py --batch-size 4 \\
        --out benchmarks/results/det_seg_h200.json
    python tools/benchmark_config.py configs/kat/upernet_kat_s.py --batch-size 8 --variants kat gelu
"""
import argparse
import os
import sys
import time

import torch

VARIANTS = {'kat': dict(mlp='kan'), 'gelu': dict(mlp='gelu', rational=None)}
BENCHMARK = 'tools/benchmark_config.py: training speed and peak memory of a detection or segmentation config, ' \
    'KAT against its GELU-MLP twin'


def training_size(cfg):
    """(H, W) the config trains at: the batch augment / preprocessor size, else the first fixed-size crop or
    pad of the training pipeline."""
    pre = cfg.model.get('data_preprocessor', {})
    if pre.get('size'):
        return tuple(pre['size'])
    for aug in pre.get('batch_augments') or []:
        if aug.get('size'):
            return tuple(aug['size'])
    for step in cfg.train_dataloader.dataset.get('pipeline', []):
        for key in ('crop_size', 'size'):
            if isinstance(step.get(key), (tuple, list)):
                return tuple(step[key])
    raise ValueError('benchmark_config: cannot tell the training image size from the config; pass --size H W')


def num_classes(cfg) -> int:
    model = cfg.model
    if 'decode_head' in model:
        return model.decode_head.num_classes
    heads = [model.get('roi_head', {}).get('bbox_head'), model.get('bbox_head')]
    for head in heads:
        if isinstance(head, (list, tuple)):
            head = head[0]
        if head is not None and 'num_classes' in head:
            return head['num_classes']
    return 80


def make_batch(task: str, size, batch: int, classes: int, generator: torch.Generator) -> dict:
    """A data batch as the dataloader hands it to the model: uint8 images plus data samples."""
    h, w = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator))
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.), flip=False)
        if task == 'det':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            n = 12
            xy = torch.rand(n, 2, generator=generator) * torch.tensor([w * 0.8, h * 0.8])
            wh = (0.05 + 0.3 * torch.rand(n, 2, generator=generator)) * torch.tensor([w, h])
            boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1., h - 1.]))], 1)
            masks = torch.zeros(n, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[i, y0:y1 + 1, x0:x1 + 1] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.randint(0, classes, (n, ),
                                                                                  generator=generator),
                                               masks=BitmapMasks(masks.numpy(), h, w))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def run_variant(cfg, variant: str, task: str, size, batch: int, steps: int, warmup: int, device) -> dict:
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    cfg = cfg.copy()
    backbone = cfg.model.backbone
    backbone.update(VARIANTS[variant])
    backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)  # one process, as mmengine's Runner does when not distributed
    model.to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(task, size, batch, num_classes(cfg), generator) for _ in range(2)]

    def step(data):
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(data, True)
            losses = model._run_forward(data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        optim_wrapper.update_params(loss)
        return float(log_vars['loss'])

    for i in range(warmup):
        step(batches[i % 2])
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 2])  # float(): waits for the step, as the logger does
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = dict(variant=variant, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                  backbone_params_m=sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                  iters_per_s=steps / elapsed, images_per_s=steps * batch / elapsed,
                  ms_per_iter=1e3 * elapsed / steps, final_loss=loss)
    if device.type == 'cuda':
        result['peak_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--variants', nargs='+', default=['kat', 'gelu'], choices=sorted(VARIANTS),
                        help="kat: the config's backbone (mlp='kan'); gelu: its GELU-MLP twin (a plain ViT)")
    parser.add_argument('--batch-size', type=int, default=2, help='images per step (on the one device)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), help='default: the config\'s size')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config values, as tools/train.py does')
    parser.add_argument('--out', help='JSON file for the results')
    args = parser.parse_args(argv)

    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        options = {}
        DictAction()(parser, options, args.cfg_options)
        cfg.merge_from_dict(options)
    from mmengine.registry import init_default_scope

    import mmkat  # noqa: F401
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    task = 'seg' if 'decode_head' in cfg.model else 'det'
    if task == 'det':
        from mmdet.utils import register_all_modules
    else:
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    size = tuple(args.size) if args.size else training_size(cfg)
    pre = cfg.model.get('data_preprocessor', {})
    for aug in pre.get('batch_augments') or []:  # a fixed-size batch pad (ViTDet's 1024) follows --size
        if aug.get('size'):
            aug['size'] = size
    if pre.get('size'):
        pre['size'] = size
    device = torch.device(args.device)
    from mmkat.utils.results import (
        ResultsFileError,
        check_results_file,
        command_line,
        machine_name,
        new_run,
        now,
        save_results,
    )
    command, started = command_line(__file__, sys.argv[1:] if argv is None else argv), now()
    if args.out:  # refused before anything is measured
        try:
            check_results_file(args.out, BENCHMARK, machine_name(device))
        except (OSError, ResultsFileError) as e:
            parser.error(f'--out: {e}')
    if device.type != 'cuda' and 'Amp' in str(cfg.optim_wrapper.get('type', '')):
        cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU; CPU timing runs in fp32
        cfg.optim_wrapper.pop('dtype', None)
        cfg.optim_wrapper.pop('loss_scale', None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    rows = []
    for variant in args.variants:
        torch.manual_seed(0)
        row = run_variant(cfg, variant, task, size, args.batch_size, args.steps, args.warmup, device)
        rows.append(row)
        print(f'{variant:5s} {row["iters_per_s"]:7.2f} it/s {row["images_per_s"]:8.1f} img/s', flush=True)
        if device.type == 'cuda':
            torch.cuda.empty_cache()

    name = os.path.splitext(os.path.basename(args.config))[0]
    print(f'\n{name}: {task}, {size[0]}x{size[1]}, batch {args.batch_size}, optimizer wrapper '
          f'{cfg.optim_wrapper.get("type")} {cfg.optim_wrapper.get("dtype", "")}')
    print('| backbone MLP | params (all / backbone) | iters/s | images/s | ms/iter | vs GELU | peak GiB |')
    print('|---|---|---|---|---|---|---|')
    base = next((r for r in rows if r['variant'] == 'gelu'), rows[0])
    for row in rows:
        label = 'KAT (group-rational KAN)' if row['variant'] == 'kat' else 'ViT (GELU MLP)'
        print(f'| {label} | {row["params_m"]:.1f} M / {row["backbone_params_m"]:.1f} M | {row["iters_per_s"]:.2f} | '
              f'{row["images_per_s"]:.1f} | {row["ms_per_iter"]:.0f} | '
              f'{row["images_per_s"] / base["images_per_s"]:.2f} | {row.get("peak_mem_gib", float("nan")):.1f} |')

    if args.out:
        settings = dict(config=args.config, task=task, size=list(size), batch_size=args.batch_size,
                        steps=args.steps, warmup=args.warmup, optim_wrapper=str(cfg.optim_wrapper.get('type')),
                        amp_dtype=str(cfg.optim_wrapper.get('dtype', '')))
        save_results(args.out, new_run(command, device, date=started, settings=settings, rows=rows), BENCHMARK)


if __name__ == '__main__':
    main()
