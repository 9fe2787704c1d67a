"""Convert a released KAT checkpoint (timm's kat_{tiny,small,base}_patch16_224, plain or wrapped in model /
state_dict / state_dict_ema) or a timm ViT checkpoint into a full OpenMMLab model checkpoint.

    python tools/convert_checkpoint.py kat_tiny_patch16_224.pth checkpoints/kat_t_in1k_released.pth --task cls
    python tools/convert_checkpoint.py kat_small_patch16_224.pth checkpoints/kat_s_backbone.pth --task det

cls: backbone + the released 1000-class head as mmpretrain's LinearClsHead (test it with
configs/kat/kat_*_in1k_released.py). det / seg: the backbone only, for load_from in an mmdet / mmseg config
(or point model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) at the released file directly).
The source is read with weights_only=True; the destination is never overwritten unless --force.
"""
import argparse
import os
import sys

import torch

try:  # the installed mmkat, else the one of the checkout this tool belongs to
    import mmkat  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmkat.models.checkpoint import TASKS, load_state_dict_file, to_openmmlab_checkpoint  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tools/convert_checkpoint.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='released KAT (or timm ViT) .pth file')
    parser.add_argument('dst', help='output .pth (an OpenMMLab checkpoint: state_dict + meta)')
    parser.add_argument('--task', choices=TASKS, default='cls',
                        help='cls keeps the classifier as head.fc; det and seg keep the backbone only')
    parser.add_argument('--prefer-ema', action='store_true', help="take 'state_dict_ema' when the file has it")
    parser.add_argument('--force', action='store_true', help='overwrite dst if it exists')
    args = parser.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        parser.error('src and dst are the same file')
    if os.path.exists(args.dst) and not args.force:
        parser.error(f'{args.dst} exists; not overwriting it (pass --force to replace it)')
    try:
        checkpoint = load_state_dict_file(args.src)  # an mmengine training checkpoint too
        converted = to_openmmlab_checkpoint(checkpoint, args.task, args.prefer_ema, source=os.path.basename(args.src))
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
        parser.exit(1, f'tools/convert_checkpoint.py: error: {err}\n')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    tmp = f'{args.dst}.tmp{os.getpid()}'
    torch.save(converted, tmp)
    os.replace(tmp, args.dst)
    meta = converted['meta']
    print(f"wrote {args.dst}: {len(converted['state_dict'])} tensors, {meta['kind']} weights "
          f"(dims {meta['embed_dims']}, {meta['num_layers']} blocks) from {meta['found_in']}, task {args.task}")


if __name__ == '__main__':
    main()
