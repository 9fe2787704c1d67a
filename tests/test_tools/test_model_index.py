"""Model names: configs/kat/metafile*.yml through model-index.yml and mmkat/.mim, registered in mmpretrain's
model hub by `import mmkat` (either import order), and get_model / inference_model on those names."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import yaml

from ..conftest import needs

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FMNIST_TABLE = osp.join(ROOT, 'benchmarks', 'results', 'fmnist_h200_seeds', 'table.json')


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
        table = json.load(f)
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
