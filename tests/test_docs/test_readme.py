"""Every code block of the README, the model zoo (configs/kat/README.md) and docs/*.md is run or checked here,
so the pages cannot drift from the code.

- python: a config snippet (it assigns ``_base_``, ``model`` or ``custom_imports``) is written to a file and
  loaded with mmengine's ``Config`` on top of the packaged mmdet / mmseg config its ``_base_`` names, built
  under that config's scope with its channel widths as written, and trained one step on a tiny random batch on
  the CPU (so a channel mismatch fails); a snippet without ``_base_`` builds its backbone and runs a forward.
  Any other python block is executed.
- bash: each command is checked without running it: the script or tool exists, every ``--option`` is one the
  tool's ``--help`` lists, every environment variable is one the script reads, every config loads and every
  ``--cfg-options`` key lands in it, and every weights name is in ``configs/kat/metafile.yml``.
- bibtex: every page's entry is the same.

A marker right above a block changes how it is taken: ``<!-- doctest: skip REASON -->`` (not runnable, with
the reason), ``<!-- doctest: extends previous -->`` (a config fragment put on top of the page's previous python
block), ``<!-- doctest: equals KEY of PATH -->`` (the snippet's KEY equals that config's); several are joined
with ``;``. Every relative link of the pages must resolve, anchors into these pages included, and so must
every repository path they name in inline code."""
import functools
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
import torch

from tests.conftest import needs
from tests.test_docs import markdown as md

PAGES = md.documentation_pages()
BLOCKS = [block for page in PAGES for block in md.code_blocks(page)]
LANGUAGES = {'python', 'bash', 'bibtex'}


def directives(block: md.Block) -> dict:
    """The marker's directives: {'skip': reason, 'extends previous': '', 'equals': 'KEY of PATH'}."""
    found = {}
    for part in filter(None, (p.strip() for p in (block.marker or '').split(';'))):
        for name in ('skip', 'extends previous', 'equals'):
            if part == name or part.startswith(name + ' '):
                found[name] = part[len(name):].strip()
                break
        else:
            raise AssertionError(f'{block.id}: unknown doctest directive {part!r}')
    return found


def test_the_pages_have_blocks_and_every_block_a_known_language():
    assert osp.relpath(PAGES[0], md.ROOT) == 'README.md' and len(BLOCKS) >= 10
    for block in BLOCKS:
        assert block.lang in LANGUAGES, f'{block.id}: a block needs a language of {sorted(LANGUAGES)}'
        if 'skip' in directives(block):
            assert directives(block)['skip'], f'{block.id}: a skipped block says why'


def test_the_quick_start_commands_are_in_the_readme_as_ci_runs_them():
    readme = [b.text.strip() for b in BLOCKS if osp.basename(b.path) == 'README.md' and b.lang == 'bash']
    for command in ('bash tools/setup_env.sh', '.venv/bin/python tools/train.py configs/kat/demo/kat_demo_shapes.py',
                    '.venv/bin/python -m pytest'):
        assert command in readme, f'README: the quick-start command {command!r} is no longer a block of its own'


@pytest.mark.parametrize('page', PAGES, ids=[osp.relpath(p, md.ROOT) for p in PAGES])
def test_links_and_named_paths_resolve(page):
    for target in md.relative_links(page):
        file, _, anchor = target.partition('#')
        path = osp.normpath(osp.join(osp.dirname(page), file)) if file else page
        assert osp.exists(path), f'{osp.relpath(page, md.ROOT)}: the link {target} points at nothing'
        if anchor and path in PAGES:
            assert anchor in md.anchors(path), f'{osp.relpath(page, md.ROOT)}: no heading for the link {target}'
    for named in md.inline_paths(page):
        assert osp.exists(osp.join(md.ROOT, named)), f'{osp.relpath(page, md.ROOT)}: `{named}` does not exist'


def test_bibtex_entries_agree():
    entries = {b.text for b in BLOCKS if b.lang == 'bibtex'}
    assert len(entries) == 1, 'the pages cite the paper differently'
    assert 'Kolmogorov-Arnold Transformer' in entries.pop()


# ---------------------------------------------------------------------------------------------- python
def _block_source(block: md.Block) -> str:
    """The block's text, on top of the page's previous python block where it extends it."""
    if 'extends previous' not in directives(block):
        return block.text
    earlier = [b for b in md.code_blocks(block.path) if b.lang == 'python' and b.line < block.line]
    assert earlier, f'{block.id}: extends a previous python block, but there is none'
    return _block_source(earlier[-1]) + '\n' + block.text


def _is_config(text: str) -> bool:
    return re.search(r'^(_base_|custom_imports|model)\s*=', text, flags=re.M) is not None


def _without_meta(value):
    """A config value without mmengine's merge and scope keys (``_delete_``, ``_scope_``)."""
    if isinstance(value, dict):
        return {k: _without_meta(v) for k, v in value.items() if k not in ('_delete_', '_scope_')}
    if isinstance(value, (list, tuple)):
        return [_without_meta(v) for v in value]
    return value


def _seg_batch(num_classes, size=64, batch=2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _det_batch(size=128):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         scale_factor=(1.0, 1.0)))
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:60, 20:90] = 1
    masks[1, 70:120, 30:70] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[20., 10., 90., 60.], [30., 70., 70., 120.]]),
                                       labels=torch.tensor([3, 7]), masks=BitmapMasks(masks.numpy(), size, size))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)], data_samples=[sample])


def _train_one_step(cfg):
    """Build the config's model under its scope (channels as written) and run a loss + backward on the CPU."""
    import importlib

    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    scope = cfg.default_scope
    if scope == 'mmseg':
        cfg.model.data_preprocessor.size = (64, 64)  # the input size only: channels stay as written
        batch = _seg_batch(cfg.model.decode_head.num_classes)
    elif scope == 'mmdet':
        batch = _det_batch()
    else:
        raise NotImplementedError(f'a config snippet for {scope}: teach this test a batch for it')
    init_default_scope(scope)
    model = revert_sync_batchnorm(importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model))
    assert type(model.backbone).__name__ == 'KAT'
    model.train()
    data = model.data_preprocessor(batch, training=True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0, 'the loss does not reach KAT'
    return model


def _check_backbone(backbone_cfg):
    """A snippet for any config: its backbone builds and runs; a weights name in it is a released one."""
    from mmengine.registry import MODELS

    from mmkat.hub import weight_names
    checkpoint = (backbone_cfg.get('init_cfg') or {}).get('checkpoint')
    if checkpoint and not osp.splitext(checkpoint)[1] and ':' not in checkpoint:
        assert checkpoint in weight_names(), f'{checkpoint} is not a weights name of configs/kat/metafile.yml'
    backbone = MODELS.build(backbone_cfg)  # builds without loading: init_weights() would download
    size = backbone_cfg.get('img_size', 224)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, size, size))
    assert torch.isfinite(out[-1]).all() and out[-1].shape[1] == backbone.embed_dims


def _check_equals(cfg, spec: str):
    from mmengine.config import Config
    key, sep, path = spec.partition(' of ')
    assert sep and osp.isfile(osp.join(md.ROOT, path)), f'equals: {spec!r} is not "KEY of EXISTING_CONFIG"'
    theirs = Config.fromfile(osp.join(md.ROOT, path))[key]
    assert _without_meta(cfg[key].to_dict()) == _without_meta(theirs.to_dict()), f'{key} differs from {path}'


def _step_optim_wrapper(cfg, model):
    from mmengine.optim import build_optim_wrapper
    ow = cfg.optim_wrapper.copy()
    if ow.type == 'AmpOptimWrapper':  # mmengine's AMP wrapper needs a GPU; the parameter groups are the same
        ow.type = 'OptimWrapper'
        ow.pop('loss_scale', None)
    wrapper = build_optim_wrapper(model, ow)
    lr = {id(p): g['lr'] for g in wrapper.optimizer.param_groups for p in g['params']}
    blocks = model.backbone.blocks
    if ow.get('paramwise_cfg', {}).get('layer_decay_rate', 1.0) < 1.0:
        assert lr[id(blocks[0].mlp.fc1.weight)] < lr[id(blocks[-1].mlp.fc1.weight)], 'no layer-wise lr decay'
    wrapper.step()


PYTHON = [b for b in BLOCKS if b.lang == 'python']


@needs('mmdet', 'mmseg')
@pytest.mark.parametrize('block', PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block, tmp_path, monkeypatch):
    if 'skip' in directives(block):
        pytest.skip(directives(block)['skip'])
    import mmkat  # noqa: F401
    monkeypatch.chdir(md.ROOT)
    source = _block_source(block)
    if not _is_config(source):
        exec(compile(source, block.id, 'exec'), {'__name__': '__doctest__'})
        return
    from mmengine.config import Config
    path = tmp_path / 'snippet.py'
    path.write_text(source)
    cfg = Config.fromfile(str(path))
    if cfg.get('default_scope') is None:
        _check_backbone(cfg.model.backbone)
        return
    model = _train_one_step(cfg)
    marker = directives(block)
    if 'equals' in marker:
        _check_equals(cfg, marker['equals'])
    if 'optim_wrapper' in block.text:
        _step_optim_wrapper(cfg, model)


# ------------------------------------------------------------------------------------------------ bash
# launchers: the python tool that receives the options after their own positional arguments
LAUNCHERS = {'tools/dist_train.sh': ('tools/train.py', 2), 'tools/dist_test.sh': ('tools/test.py', 3),
             'tools/slurm_train.sh': ('tools/train.py', 4)}
AFTER_DOUBLE_DASH = {'benchmarks/fmnist_seeds.sh': 'tools/train.py'}
REPO_PREFIXES = ('configs/', 'tools/', 'benchmarks/', 'docs/', 'mmkat/', 'tests/')
OUTPUT_OPTIONS = {'--out', '--work-dir', '--plot', '--chart'}


@functools.lru_cache(maxsize=None)
def tool_options(tool: str) -> frozenset:
    """The ``--options`` a python tool's ``--help`` lists."""
    result = subprocess.run([sys.executable, tool, '--help'], cwd=md.ROOT, capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=md.ROOT))
    assert result.returncode == 0, f'{tool} --help failed:\n{result.stderr[-2000:]}'
    return frozenset(re.findall(r'(--[a-z][\w-]*)', result.stdout))


@functools.lru_cache(maxsize=None)
def load_config(path: str):
    from mmengine.config import Config
    return Config.fromfile(osp.join(md.ROOT, path))


def commands(text: str):
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r'\\\n', ' ', text)
    for line in joined.split('\n'):
        tokens = shlex.split(line, comments=True)
        if tokens:
            yield line.strip(), tokens


def is_placeholder(token: str) -> bool:
    return token == '...' or re.fullmatch(r'[A-Z][A-Z0-9_]*', token) is not None


def _check_key(cfg, key: str, command: str):
    """A --cfg-options key must land in the config: all of it but its last part must exist there."""
    node = cfg
    for part in key.split('.')[:-1]:
        if isinstance(node, (list, tuple)):
            assert part.isdigit() and int(part) < len(node), f'{command}: {key} does not exist in the config'
            node = node[int(part)]
        else:
            assert part in node, f'{command}: {key} does not exist in the config'
            node = node[part]


def check_tool_arguments(tool: str, args, command: str):
    from mmkat.hub import weight_names
    assert osp.isfile(osp.join(md.ROOT, tool)), f'{command}: {tool} does not exist'
    options = tool_options(tool)
    words = [w for a in args for w in md.expand_braces(a.strip('[]'))]
    configs = [w for w in words if w.startswith('configs/') and w.endswith('.py')]
    in_cfg_options, previous = False, None
    for word in words:
        if word.startswith('--'):
            option = word.split('=', 1)[0]
            assert option in options, f'{command}: {tool} has no option {option} (--help lists {sorted(options)})'
            in_cfg_options = option == '--cfg-options'
        elif in_cfg_options and '=' in word:
            assert configs, f'{command}: --cfg-options without a config to check them against'
            for config in configs:
                _check_key(load_config(config), word.split('=', 1)[0], command)
        elif is_placeholder(word):
            pass
        elif previous in OUTPUT_OPTIONS:
            parent = osp.dirname(word)
            assert not parent.startswith(REPO_PREFIXES) or osp.isdir(osp.join(md.ROOT, parent)), command
        elif word.startswith(REPO_PREFIXES):
            assert osp.exists(osp.join(md.ROOT, word)), f'{command}: {word} does not exist'
            if word in configs:
                load_config(word)
        elif re.match(r'^kat-[a-z]+-p\d+_3rdparty', word):
            assert word in weight_names(), f'{command}: {word} is not a weights name of configs/kat/metafile.yml'
        previous = word


def check_command(command: str, tokens):
    env = []
    while tokens and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', tokens[0]):
        env.append(tokens.pop(0).split('=', 1)[0])
    program, args = tokens[0], tokens[1:]
    if program == 'bash':
        script, args = args[0], args[1:]
        path = osp.join(md.ROOT, script)
        assert osp.isfile(path), f'{command}: {script} does not exist'
        text = open(path).read()
        for other in re.findall(r'[\w/]+\.sh', text):  # a launcher that hands over to another script
            if osp.isfile(osp.join(osp.dirname(path), osp.basename(other))):
                text += open(osp.join(osp.dirname(path), osp.basename(other))).read()
        for name in env:
            assert re.search(rf'\b{name}\b', text), f'{command}: {script} does not read {name}'
        if script in LAUNCHERS:
            tool, positional = LAUNCHERS[script]
            assert len(args) >= positional, f'{command}: {script} takes {positional} arguments before the options'
            check_tool_arguments(tool, args, command)
        elif script in AFTER_DOUBLE_DASH and '--' in args:
            cut = args.index('--')
            check_tool_arguments(AFTER_DOUBLE_DASH[script], args[cut + 1:], command)
            for word in (w for a in args[:cut] for w in md.expand_braces(a)):
                assert not word.startswith(REPO_PREFIXES) or osp.exists(osp.join(md.ROOT, word)), command
        else:
            for word in (w for a in args for w in md.expand_braces(a.strip('[]'))):
                assert not word.startswith(REPO_PREFIXES) or osp.exists(osp.join(md.ROOT, word)), command
    elif program in ('.venv/bin/python', 'python', 'python3'):
        assert not env, f'{command}: environment variables for a python tool are not checked'
        if args[0] == '-m':
            import importlib.util
            assert importlib.util.find_spec(args[1]) is not None, f'{command}: no module {args[1]}'
        else:
            check_tool_arguments(args[0], args[1:], command)
    else:
        raise AssertionError(f'{command}: this test does not know how to check {program!r}')


BASH = [b for b in BLOCKS if b.lang == 'bash']


@pytest.mark.parametrize('block', BASH, ids=[b.id for b in BASH])
def test_shell_block_commands_exist(block, monkeypatch):
    if 'skip' in directives(block):
        pytest.skip(directives(block)['skip'])
    import mmkat  # noqa: F401  (config loading registers mmkat's modules)
    monkeypatch.chdir(md.ROOT)
    found = list(commands(block.text))
    assert found, f'{block.id}: an empty block'
    for command, tokens in found:
        check_command(command, tokens)
