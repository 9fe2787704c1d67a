"""Predict with a trained model of any mmkat config (classification, detection, segmentation) on images.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE ...] --out DIR [--device cpu] [--score-thr 0.3] [--force]

The task follows from the config's ``default_scope``: mmpretrain's ``ImageClassificationInferencer``, mmdet's
``DetInferencer`` or mmseg's ``MMSegInferencer`` does the work, as in any OpenMMLab project. DIR receives
``vis/`` (each image with its prediction drawn on it) and ``preds/<image stem>.json`` (the prediction: class
scores; boxes, labels, scores and RLE masks; or, for segmentation, the path of the label map written to
``label_maps/`` and the class names).
An existing DIR with files in it is kept unless --force.

Detection: boxes (with their masks) scoring at or below --score-thr (default 0.3, the threshold mmdet's
``DetInferencer`` draws with) are neither drawn in vis/ nor saved in preds/, whose JSON records the threshold
as ``score_thr``; --score-thr 0 keeps every prediction the model returns (up to its test_cfg's max_per_img).
Classification and segmentation predictions have no boxes: --score-thr does not apply to them.
"""
import argparse
import json
import os
import os.path as osp
import sys

import mmkat  # noqa: F401  (registers mmkat's modules, checkpoint allowlist and weights references)

PROG = 'tools/infer.py'
TASKS = {'mmpretrain': 'classification', 'mmdet': 'detection', 'mmseg': 'segmentation'}
DEFAULT_SCORE_THR = 0.3  # mmdet's DetInferencer's pred_score_thr
INSTANCE_KEYS = ('labels', 'scores', 'bboxes', 'masks')  # one entry per box in mmdet's prediction dict


def fail(message):
    sys.exit(f'{PROG}: error: {message}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the config the checkpoint was trained with (.py)')
    parser.add_argument('checkpoint', help='a checkpoint written by tools/train.py (or a converted one), a '
                        '.safetensors file, a URL, hf_hub:OWNER/REPO or an mmkat weights name')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--out', required=True, help='output folder (vis/ and preds/ are written in it)')
    parser.add_argument('--device', default=None, help='cuda, cuda:1, cpu (default: cuda when a GPU is visible)')
    parser.add_argument(
        '--score-thr', type=float, default=None, metavar='THR',
        help=f'detection only: boxes (and their masks) scoring at or below THR are neither drawn nor saved '
        f'(default {DEFAULT_SCORE_THR}, as mmdet\'s DetInferencer; 0 keeps all); classification and segmentation '
        'ignore it')
    parser.add_argument('--force', action='store_true', help='write into an output folder that already holds files')
    return parser.parse_args(argv)


def _to_json(value):
    """Predictions as JSON-able values (tensors and arrays to lists, RLE bytes to str)."""
    import numpy as np
    import torch
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode('ascii')
    return value


def keep_above(pred, score_thr):
    """mmdet's prediction dict without the boxes scoring at or below ``score_thr`` (as its visualizer draws
    them: score > threshold), the threshold recorded as ``score_thr``."""
    scores = pred.get('scores')
    if not isinstance(scores, list):
        return dict(pred, score_thr=score_thr)
    keep = [i for i, score in enumerate(scores) if score > score_thr]
    kept = dict(pred)
    for key in INSTANCE_KEYS:
        if isinstance(pred.get(key), list) and len(pred[key]) == len(scores):
            kept[key] = [pred[key][i] for i in keep]
    kept['score_thr'] = score_thr
    return kept


def build_inferencer(task, config, checkpoint, device):
    if task == 'classification':
        from mmpretrain.apis import ImageClassificationInferencer
        return ImageClassificationInferencer(model=config, pretrained=checkpoint, device=device)
    if task == 'detection':
        from mmdet.apis import DetInferencer
        return DetInferencer(model=config, weights=checkpoint, device=device, show_progress=False)
    from mmseg.apis import MMSegInferencer
    return MMSegInferencer(model=config, weights=checkpoint, device=device)


def predict(task, inferencer, image, out, score_thr=DEFAULT_SCORE_THR):
    """Run one image; write vis/<name> and preds/<stem>.json under ``out``; return the JSON written.
    ``score_thr``: detection only, the boxes drawn and saved score above it."""
    name = osp.basename(image)
    stem = osp.splitext(name)[0]
    vis_dir, pred_dir = osp.join(out, 'vis'), osp.join(out, 'preds')
    os.makedirs(vis_dir, exist_ok=True)
    os.makedirs(pred_dir, exist_ok=True)
    if task == 'classification':  # draws vis/<stem>.png
        result = inferencer(image, show_dir=vis_dir)[0]
        pred = dict(pred_label=int(result['pred_label']), pred_score=float(result['pred_score']),
                    pred_class=result.get('pred_class'), pred_scores=_to_json(result['pred_scores']))
    elif task == 'detection':  # draws vis/<name> (boxes above score_thr); preds/<stem>.json: the same boxes
        result = inferencer(image, out_dir=out, no_save_pred=False, return_vis=False, print_result=False,
                            pred_score_thr=score_thr)
        pred = keep_above(_to_json(result['predictions'][0]), score_thr)  # replaces mmdet's file of every box
    else:  # draws vis/<name>; the label map goes to label_maps/<stem>.png
        maps = osp.join(out, 'label_maps')
        before = set(os.listdir(maps)) if osp.isdir(maps) else set()
        inferencer(image, out_dir=out, img_out_dir='vis', pred_out_dir='label_maps')
        written = sorted(set(os.listdir(maps)) - before) if osp.isdir(maps) else []
        label_map = osp.join(maps, stem + '.png')
        if len(written) == 1 and written[0] != stem + '.png':  # mmseg numbers its files: name it after the image
            os.replace(osp.join(maps, written[0]), label_map)
        classes = list(inferencer.model.dataset_meta.get('classes', []))
        pred = dict(label_map=label_map if osp.exists(label_map) else None, classes=classes)
    with open(osp.join(pred_dir, stem + '.json'), 'w') as f:
        json.dump(pred, f)
    return pred


def main(argv=None):
    args = parse_args(argv)
    from mmkat.hub import WeightsError, is_remote
    for path, what in [(args.config, 'config'), (args.checkpoint, 'checkpoint')] + [(i, 'image') for i in args.images]:
        if not osp.isfile(path) and not (what == 'checkpoint' and is_remote(path)):
            fail(f'{what} not found: {path}')
    stems = [osp.splitext(osp.basename(i))[0] for i in args.images]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:  # their pictures and predictions would overwrite each other under --out
        fail(f'several images share the name {", ".join(twins)}: give each image its own file name')
    if args.score_thr is not None and not 0 <= args.score_thr <= 1:
        fail(f'--score-thr must lie in [0, 1] (scores are probabilities), got {args.score_thr}')
    if osp.isdir(args.out) and os.listdir(args.out) and not args.force:
        fail(f'--out: {args.out} already holds files; pass --force to write into it, or name another folder')

    from mmengine.config import Config
    cfg = Config.fromfile(args.config)  # imports mmkat through custom_imports
    task = TASKS.get(cfg.get('default_scope'))
    if task is None:
        fail(f"{args.config}: default_scope {cfg.get('default_scope')!r} is not one of {sorted(TASKS)}; "
             'tools/infer.py handles mmpretrain, mmdet and mmseg configs')
    score_thr = DEFAULT_SCORE_THR if args.score_thr is None else args.score_thr
    if args.score_thr is not None and task != 'detection':
        print(f'{PROG}: note: --score-thr applies to detection only; the {task} predictions are kept whole',
              file=sys.stderr)
    device = args.device
    if device is None:
        import torch
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    from mmkat.engine.checkpoint_fit import checkpoint_fit, read_as_mmengine
    try:  # read first: an unreadable file, a failed download or digest gets one line, not the inferencer's traceback
        state = read_as_mmengine(args.checkpoint)
    except (WeightsError, ValueError) as e:
        fail(str(e))
    inferencer = build_inferencer(task, args.config, args.checkpoint, device)
    problems = checkpoint_fit(inferencer.model, state).problems()
    if problems:  # predictions of a half-loaded model would not be the checkpoint's
        fail(f'{args.checkpoint} does not fit the model of {args.config}:\n  ' + '\n  '.join(problems))
    os.makedirs(args.out, exist_ok=True)
    for image in args.images:
        predict(task, inferencer, image, args.out, score_thr)
        print(f'{image}: {osp.join(args.out, "preds", osp.splitext(osp.basename(image))[0] + ".json")}')
    print(f'wrote {len(args.images)} predictions and pictures under {args.out} ({task})')


if __name__ == '__main__':
    main()
