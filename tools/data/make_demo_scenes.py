"""Draw the demo scene set that the detection and segmentation demo configs train on (no download).

    python tools/data/make_demo_scenes.py                       # data/kat_demo_scenes: 400 train, 60 val images
    python tools/data/make_demo_scenes.py --out DIR --train 800 --val 100 --img-size 256 --seed 0

Layout (read unchanged by mmdet's CocoDataset and mmseg's BaseSegDataset; see mmkat/datasets/scenes.py):
images/{train,val}/*.jpg, annotations/instances_{train,val}.json (COCO, masks as RLE), seg/{train,val}/*.png
(0 background, 1..5 disc ring square triangle cross). An existing non-empty folder is never rewritten unless
--overwrite is given.
"""
import argparse
import os.path as osp
import sys
import time

DEFAULT_OUT = 'data/kat_demo_scenes'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=DEFAULT_OUT, help=f'output folder (default {DEFAULT_OUT})')
    parser.add_argument('--train', type=int, default=400, help='training images (default 400)')
    parser.add_argument('--val', type=int, default=60, help='validation images (default 60)')
    parser.add_argument('--img-size', type=int, default=256, help='image side in pixels (default 256)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true', help='rewrite the files of an existing folder')
    args = parser.parse_args(argv)

    from mmkat.datasets.scenes import make_scenes
    start = time.time()
    try:
        objects = make_scenes(args.out, dict(train=args.train, val=args.val), img_size=args.img_size,
                              seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {args.out}: ' + ', '.join(f'{split} {getattr(args, split)} images / {count} objects'
                                          for split, count in objects.items()) + f' in {time.time() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
