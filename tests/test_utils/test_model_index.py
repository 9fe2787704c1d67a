"""Model names: configs/kat/metafile*.yml through model-index.yml and mmkat/.mim, registered in mmpretrain's
model hub by `import mmkat` (either import order), and get_model / inference_model on those names."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import yaml

from tests.conftest import needs

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FMNIST_TABLE = osp.join(ROOT, 'benchmarks', 'results', 'fmnist_h200.json')


def models_of(path):
    with open(path) as f:
        return yaml.safe_load(f)['Models']


def test_model_index_lists_every_metafile_and_every_config_exists():
    with open(osp.join(ROOT, 'mmkat', '.mim', 'model-index.yml')) as f:  # through the package's .mim link
        imports = yaml.safe_load(f)['Import']
    names = []
    for metafile in imports:
        for model in models_of(osp.join(ROOT, metafile)):
            assert osp.isfile(osp.join(ROOT, 'mmkat', '.mim', model['Config'])), model
            names.append(model['Name'])
    assert len(names) == len(set(names))
    assert any(n.startswith('mask-rcnn_kat-small') for n in names) and 'kat-tiny-p16_3rdparty_in1k' in names


def test_measured_fashion_mnist_figures_match_the_recorded_runs():
    with open(FMNIST_TABLE) as f:
        table = json.load(f)['runs'][-1]['rows']
    row_of = {'configs/kat/fashion_mnist/kat_t_fmnist.py': 'KAT-T',
              'configs/kat/fashion_mnist/vit_t_fmnist.py': 'ViT-T',
              'configs/kat/fashion_mnist/kat_t_vp_fmnist.py': 'KAT-T (variance-preserving init)'}
    checked = 0
    for model in models_of(osp.join(ROOT, 'configs', 'kat', 'metafile.yml')):
        for result in model.get('Results') or []:
            if result['Dataset'] == 'Fashion-MNIST' and result['Metrics']:
                recorded = table[row_of[model['Config']]]['summary']['last']['mean']
                assert result['Metrics']['Top 1 Accuracy'] == round(recorded, 2), model['Name']
                checked += 1
    assert checked == 3


SCRIPT = '''
import sys, torch
order = sys.argv[1]
if order == 'mmkat-first':
    import mmkat
    from mmpretrain import get_model, inference_model, list_models
else:
    from mmpretrain import get_model, inference_model, list_models
    import mmkat
names = list_models('*fashion-mnist')
assert 'kat-tiny-p4_1xb1024_fashion-mnist' in names and 'vit-tiny-p4-twin_1xb1024_fashion-mnist' in names, names
assert 'kat-tiny-p16_3rdparty_in1k' in list_models('kat*')
model = get_model('kat-mini-p4_1xb128_fashion-mnist')
assert type(model.backbone).__name__ == 'KAT' and model.backbone.embed_dims == 64
if len(sys.argv) > 2:
    ckpt, image = sys.argv[2:]
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=list('abcdefghij')))), ckpt)
    loaded = get_model('kat-mini-p4_1xb128_fashion-mnist', pretrained=ckpt)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    result = inference_model(loaded, image)
    assert result['pred_class'] in list('abcdefghij') and 0 <= result['pred_score'] <= 1, result
print('ok')
'''


@needs('mmpretrain')
@pytest.mark.parametrize('order', ['mmkat-first', 'mmpretrain-first'])
def test_mmpretrain_resolves_mmkat_model_names_after_import_mmkat(order, tmp_path):
    extra = []
    if order == 'mmkat-first':  # the full round trip once: weights by path, then inference on an image file
        import numpy as np
        from PIL import Image
        image = tmp_path / 'item.png'
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
        extra = [str(tmp_path / 'weights.pth'), str(image)]
    proc = subprocess.run([sys.executable, '-c', SCRIPT, order, *extra], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


DENSE_SCRIPT = '''
import sys, types
import numpy as np, torch
from PIL import Image
order, folder = sys.argv[1:]
if order == 'mmkat-first':
    import mmkat
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer
else:
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer
    import mmkat
from mmengine.config import Config
from mmengine.infer import BaseInferencer
from mmengine.registry import MODELS, init_default_scope
from mmkat.hub import WeightsError
from mmkat.utils.model_index import dense_models

image = f'{folder}/scene.png'
Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
names = {'mmdet': 'mask-rcnn_kat-demo_scenes', 'mmseg': 'upernet_kat-demo_scenes'}
inferencers = {'mmdet': DetInferencer, 'mmseg': MMSegInferencer}
for scope, name in names.items():
    Inferencer = inferencers[scope]
    # no weights given: refused before any model is built (none are published)
    try:
        Inferencer(model=name, device='cpu')
        raise SystemExit(f'{name} without weights was not refused')
    except WeightsError as e:
        assert f'{name} has no published weights' in str(e) and 'pass your checkpoint as weights' in str(e), e
    # the other task's inferencer names the right one
    other = 'mmseg' if scope == 'mmdet' else 'mmdet'
    try:
        inferencers[other](model=name, weights='unused.pth', device='cpu')
        raise SystemExit(f'{name} was accepted by the {other} inferencer')
    except ValueError as e:
        assert f'{name} is an {scope} model of mmkat' in str(e) and Inferencer.__name__ in str(e), e
    # weights saved from a freshly built model of the config the name stands for
    cfg = Config.fromfile(dense_models()[name])
    init_default_scope(scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    weights = f'{folder}/{scope}.pth'
    classes = list(cfg.test_dataloader.dataset.metainfo.classes)
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=classes))), weights)
    inferencer = Inferencer(model=name, weights=weights, device='cpu')
    for (key, a), b in zip(model.state_dict().items(), inferencer.model.state_dict().values()):
        assert torch.equal(a, b.cpu()), key
    result = inferencer(image, return_vis=False)
    pred = result['predictions'][0] if isinstance(result['predictions'], list) else result['predictions']
    if scope == 'mmdet':
        assert set(pred) >= {'labels', 'scores', 'bboxes', 'masks'}, pred.keys()
    else:
        assert np.asarray(pred).shape == (96, 128), np.asarray(pred).shape
# the scopes' own names resolve as before (no download: only the lookup), unknown names still fail as before
cfg, url = BaseInferencer._load_model_from_metafile(types.SimpleNamespace(scope='mmdet'), 'rtmdet_tiny_8xb32-300e_coco')
assert cfg.model.type == 'RTMDet' and url.startswith('https://download.openmmlab.com/'), url
cfg, url = BaseInferencer._load_model_from_metafile(types.SimpleNamespace(scope='mmseg'),
                                                    'pspnet_r50-d8_4xb2-40k_cityscapes-512x1024')
assert cfg.model.decode_head.type == 'PSPHead' and url.startswith('https://download.openmmlab.com/'), url
try:
    BaseInferencer._load_model_from_metafile(types.SimpleNamespace(scope='mmdet'), 'no-such-model')
    raise SystemExit('an unknown name was accepted')
except ValueError as e:
    assert 'Cannot find model: no-such-model in mmdet' in str(e), e
print('ok')
'''


@needs('mmdet', 'mmseg')
@pytest.mark.parametrize('order', ['mmkat-first', 'mmdet-first'])
def test_dense_names_work_with_det_and_seg_inferencers_given_weights(order, tmp_path):
    """configs/kat/metafile_dense.yml's names through DetInferencer / MMSegInferencer(model=NAME, weights=...)
    in either import order; without weights they are refused (no weights are published)."""
    proc = subprocess.run([sys.executable, '-c', DENSE_SCRIPT, order, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_every_dense_name_has_a_config_of_its_scope():
    from mmengine.config import Config

    from mmkat.utils.model_index import dense_models
    names = dense_models()
    assert len(names) == len(models_of(osp.join(ROOT, 'configs', 'kat', 'metafile_dense.yml')))
    for name, config in names.items():
        assert osp.isabs(config) and osp.isfile(config), (name, config)
        scope = Config.fromfile(config).default_scope
        assert scope == ('mmdet' if name.startswith('mask-rcnn') else 'mmseg'), (name, scope)
