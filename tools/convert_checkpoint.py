"""Convert a released KAT checkpoint (timm's kat_{tiny,small,base}_patch16_224, plain or wrapped in model /
state_dict / state_dict_ema) or a timm ViT checkpoint into a full OpenMMLab model checkpoint.

    python tools/convert_checkpoint.py kat-tiny-p16_3rdparty_in1k checkpoints/kat_t_in1k_released.pth --task cls
    python tools/convert_checkpoint.py kat_small_patch16_224.pth checkpoints/kat_s_backbone.pth --task det
    python tools/convert_checkpoint.py hf_hub:adamdad/kat_small_patch16_224 kat_s.pth --task cls

The source is a file (.pth or .safetensors), a URL, hf_hub:OWNER/REPO or an mmkat weights name (downloaded
once into the cache and checked against the digest in its file name, see mmkat/hub.py). The tool prints the
size the file holds, read from its tensors (a file labelled KAT-S that holds KAT-T shows here).

cls: backbone + the released 1000-class head as mmpretrain's LinearClsHead (test it with
configs/kat/kat_*_in1k_released.py). det / seg: the backbone only, for load_from in an mmdet / mmseg config
(or point model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) at the released file directly).
The source is read with weights_only=True; the destination is never overwritten unless --force.
"""
import argparse
import os

import torch

from mmkat.hub import WeightsError, read_weights
from mmkat.models.checkpoint import TASKS, backbone_state_dict, checkpoint_size, size_name, to_openmmlab_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tools/convert_checkpoint.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='released KAT (or timm ViT) .pth / .safetensors file, URL, hf_hub:OWNER/REPO or '
                        'mmkat weights name')
    parser.add_argument('dst', help='output .pth (an OpenMMLab checkpoint: state_dict + meta)')
    parser.add_argument('--task', choices=TASKS, default='cls',
                        help='cls keeps the classifier as head.fc; det and seg keep the backbone only')
    parser.add_argument('--prefer-ema', action='store_true', help="take 'state_dict_ema' when the file has it")
    parser.add_argument('--force', action='store_true', help='overwrite dst if it exists')
    parser.add_argument('--no-check-digest', dest='check_digest', action='store_false',
                        help='use a file whose bytes do not match the sha256 its name carries (verified otherwise)')
    args = parser.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        parser.error('src and dst are the same file')
    if os.path.exists(args.dst) and not args.force:
        parser.error(f'{args.dst} exists; not overwriting it (pass --force to replace it)')
    try:
        checkpoint = read_weights(args.src, check_digest=args.check_digest)  # an mmengine training checkpoint too
        converted = to_openmmlab_checkpoint(checkpoint, args.task, args.prefer_ema, source=os.path.basename(args.src))
        backbone, report = backbone_state_dict(checkpoint, args.prefer_ema)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError, WeightsError) as err:
        parser.exit(1, f'tools/convert_checkpoint.py: error: {err}\n')
    kind = 'KAT' if report['kind'] == 'kat' else 'ViT'
    print(f'{args.src}: {kind} weights of size {size_name(*checkpoint_size(backbone), kind=report["kind"])}')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    tmp = f'{args.dst}.tmp{os.getpid()}'
    torch.save(converted, tmp)
    os.replace(tmp, args.dst)
    meta = converted['meta']
    print(f"wrote {args.dst}: {len(converted['state_dict'])} tensors, {meta['kind']} weights "
          f"(dims {meta['embed_dims']}, {meta['num_layers']} blocks) from {meta['found_in']}, task {args.task}")


if __name__ == '__main__':
    main()
