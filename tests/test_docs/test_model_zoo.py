"""The model zoo (configs/kat/README.md) agrees with the configs and metafiles: every table with a config column
states each config's schedule (``train_cfg``) and images per iteration (GPUs x ``train_dataloader.batch_size``,
the GPUs being those ``auto_scale_lr.base_batch_size`` assumes, else 1) as the config has them; a table of runs
(with a command column) states them as the command's ``--cfg-options`` and GPU count make them. The name
column holds exactly the metafile models of the row's configs, and a name's ``<GPUs>xb<images>`` and
``-<N>k`` parts match its config. Every config is in the zoo, and the files follow the naming rule it gives."""
import glob
import os.path as osp
import re
import shlex
from typing import Dict, List, Tuple

import pytest
import yaml

from tests.conftest import needs
from tests.test_docs.markdown import MODEL_ZOO, README, ROOT, code_blocks, expand_braces, tables

CONFIG_DIR = osp.join(ROOT, 'configs', 'kat')


def zoo_tables() -> List[List[Dict[str, str]]]:
    return [t for t in tables(MODEL_ZOO) if t and {'config', 'schedule', 'images'} <= set(t[0])]


def row_configs(row) -> List[str]:
    """The configs a row is about, relative to configs/kat/ (a brace list names several)."""
    cell = row['config'].strip('`')
    assert re.fullmatch(r'[\w/{},.]+\.py', cell), f'config cell {row["config"]!r} is not one config path'
    return expand_braces(cell)


def metafile_models() -> Dict[str, List[str]]:
    """config path (relative to configs/kat/) -> the model names of metafile.yml and metafile_dense.yml."""
    models = {}
    for name in ('metafile.yml', 'metafile_dense.yml'):
        with open(osp.join(CONFIG_DIR, name)) as f:
            for model in yaml.safe_load(f)['Models']:
                config = osp.relpath(osp.join(ROOT, model['Config']), CONFIG_DIR)
                models.setdefault(config, []).append(model['Name'])
    return models


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {'True': True, 'False': False, 'None': None}.get(text, text)


def command_settings(command: str) -> Tuple[str, int, dict]:
    """(config, GPUs, --cfg-options) of a training command as the zoo writes it."""
    tokens = shlex.split(command)
    configs = [t for t in tokens if t.startswith('configs/kat/') and t.endswith('.py')]
    assert len(configs) == 1, f'{command}: names {len(configs)} configs'
    at = tokens.index(configs[0])
    launcher = ' '.join(tokens[:at])
    if launcher == 'bash tools/dist_train.sh':
        gpus = int(tokens[at + 1])
    else:
        assert launcher == 'python tools/train.py', f'{command}: an unknown launcher {launcher!r}'
        gpus = 1
    options = {}
    if '--cfg-options' in tokens:
        for pair in tokens[tokens.index('--cfg-options') + 1:]:
            if pair.startswith('--'):
                break
            key, _, value = pair.partition('=')
            options[key] = parse_value(value)
    return osp.relpath(osp.join(ROOT, configs[0]), CONFIG_DIR), gpus, options


def load(config: str, options=None):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(CONFIG_DIR, config))
    if options:
        cfg.merge_from_dict(options, allow_list_keys=True)
    return cfg


def config_gpus(cfg) -> int:
    """The GPUs a config assumes: its auto_scale_lr.base_batch_size over its batch per GPU, else 1."""
    base = (cfg.get('auto_scale_lr') or {}).get('base_batch_size')
    batch = cfg.train_dataloader.batch_size
    if base is None:
        return 1
    assert base % batch == 0, f'base_batch_size {base} is not a multiple of the batch per GPU {batch}'
    return base // batch


def schedule(cfg) -> str:
    if cfg.get('load_from'):
        return 'evaluation only'
    train_cfg = cfg.train_cfg
    if 'max_iters' in train_cfg:
        return f'{train_cfg.max_iters:,} iterations'
    return f'{train_cfg.max_epochs} epochs'


def images(cfg, gpus: int) -> str:
    if cfg.get('load_from'):
        return '-'
    batch = cfg.train_dataloader.batch_size
    return f'{gpus * batch} ({gpus} x {batch})'


ROWS = [row for table in zoo_tables() for row in table]


def row_id(row):
    return row['config'].strip('`') + (' ' + row['machine'] if 'machine' in row else '') + (
        ' ' + row['name'].strip('`') if 'name' in row else '')


def test_the_zoo_has_the_paper_the_bibtex_and_its_tables():
    text = open(MODEL_ZOO).read()
    assert 'https://arxiv.org/abs/2409.10594' in text
    bibtex = [b.text for b in code_blocks(MODEL_ZOO) if b.lang == 'bibtex']
    assert len(bibtex) == 1 and '@inproceedings{yang2025kat' in bibtex[0]
    assert len(zoo_tables()) >= 5 and len(ROWS) >= 20


@needs('mmdet', 'mmseg')
@pytest.mark.parametrize('row', ROWS, ids=[row_id(r) for r in ROWS])
def test_schedule_and_images_agree_with_the_config(row):
    import mmkat  # noqa: F401
    if 'command' in row:
        config, gpus, options = command_settings(row['command'].strip('`'))
        assert [config] == row_configs(row), f'the command trains {config}, the row is about {row["config"]}'
        cfg = load(config, options)
        assert (row['schedule'], row['images']) == (schedule(cfg), images(cfg, gpus)), row['command']
        return
    for config in row_configs(row):
        cfg = load(config)
        got = (schedule(cfg), images(cfg, config_gpus(cfg)))
        assert (row['schedule'], row['images']) == got, f'{config}: the config has {got}'


def test_names_are_the_metafile_models_of_the_configs():
    """A row about several configs (a brace list) names the models of all of them."""
    named = {}
    for row in ROWS:
        if 'name' in row:
            named.setdefault(tuple(row_configs(row)), set()).update(expand_braces(row['name'].strip('`')))
    models = metafile_models()
    for configs, names in named.items():
        assert names == {n for c in configs for n in models.get(c, [])}, f'the names of {configs}'
    assert {c for configs in named for c in configs} == set(models), 'metafile models the zoo does not name'


@needs('mmdet', 'mmseg')
def test_model_names_state_their_configs_gpus_batch_and_iterations():
    import mmkat  # noqa: F401
    for config, names in metafile_models().items():
        cfg = load(config)
        for name in names:
            setting = re.search(r'_(\d+)xb(\d+)', name)
            if setting:
                assert (int(setting.group(1)), int(setting.group(2))) == (
                    config_gpus(cfg), cfg.train_dataloader.batch_size), f'{name} against {config}'
            iterations = re.search(r'-(\d+)k_', name)
            if iterations:
                assert int(iterations.group(1)) * 1000 == cfg.train_cfg.max_iters, f'{name} against {config}'


def test_every_config_is_in_the_zoo_and_follows_the_naming_rule():
    listed = {config for row in ROWS for config in row_configs(row)}
    shipped = {osp.relpath(p, CONFIG_DIR) for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)}
    assert shipped - listed == set(), 'configs the model zoo does not list'
    assert listed - shipped == set(), 'the model zoo lists configs that do not exist'
    rule = re.compile(r'(kat_[tsb]_in1k(_released)?|mask_rcnn_kat_[tsb]|upernet_kat_[tsb])\.py')
    top = [c for c in shipped if '/' not in c]
    assert [c for c in top if not rule.fullmatch(c)] == [], 'configs/kat/*.py that break the naming rule'


def test_readme_results_are_the_zoos():
    """The README's short results table repeats figures of the zoo: every +/- figure is one the zoo has."""
    zoo = open(MODEL_ZOO).read()
    readme = open(README).read()
    figures = re.findall(r'\d+\.\d+ \+/- \d+\.\d+', readme)
    assert figures and [f for f in figures if f not in zoo] == []
