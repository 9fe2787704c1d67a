"""mmkat.hub: weights by path, URL, hf_hub: reference and weights name; downloaded once into the cache,
checked against the digest in the file name, read without pickle where the format allows. Every server is
on 127.0.0.1 (tests/hub_servers.py); caches live in the test's temporary folder."""
import hashlib
import io
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from tests.conftest import needs
from tests.hub_servers import FakeHFEndpoint, LoopbackFileServer
from tests.test_models.test_backbones.test_kat import released_like_state_dict, small_kat

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RELEASED_NAMES = [f'kat-{size}-p16_3rdparty{ft}_in1k' for size in ('tiny', 'small', 'base') for ft in ('', '-vitft')]


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Caches in tmp_path, no proxy between the tests and 127.0.0.1, no mirror."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    for var in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    monkeypatch.delenv('MMKAT_WEIGHTS_MIRROR', raising=False)
    return tmp_path


def pth_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_named(stem: str, data: bytes, ext: str = '.pth') -> str:
    """The authors' naming: <stem>_<sha256 of the bytes><ext>."""
    return f'{stem}_{sha256(data)}{ext}'


def safetensors_bytes(state_dict) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in state_dict.items()})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def point_huggingface_hub(monkeypatch, hf, hf_home, offline=False):
    """huggingface_hub read HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it was imported: patch its constants."""
    import huggingface_hub.constants
    import huggingface_hub.file_download
    for name, value in hf.hub_constants(hf_home).items():
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', offline)
    monkeypatch.setattr(huggingface_hub.file_download, '_DEFAULT_RETRY_ON_EXCEPTIONS', ())  # no 23 s of retries
    monkeypatch.setenv('HF_ENDPOINT', hf.url)


def gets(server):
    return [path for method, path in server.requests if method == 'GET']


def loaded_kat(checkpoint, **pretrained):
    model = small_kat(init_cfg=dict(type='Pretrained', checkpoint=checkpoint, **pretrained))
    model.init_weights()
    return model


# ------------------------------------------------------------------------------------------------ URLs
def test_url_is_downloaded_once_into_the_torch_hub_cache_and_then_read_without_a_request(hub_env):
    from mmkat.hub import cache_dir, resolve

    data = pth_bytes(released_like_state_dict())
    name = digest_named('kat_mini_patch8_32', data)
    with LoopbackFileServer() as server:
        server.files['/release/' + name] = data
        url = f'{server.url}/release/{name}'
        path = resolve(url)
        assert path == osp.join(cache_dir(), name) == str(hub_env / 'torch' / 'hub' / 'checkpoints' / name)
        assert open(path, 'rb').read() == data
        assert gets(server) == ['/release/' + name]
        model = loaded_kat(url)  # the init_cfg path: a cache hit, no second request
        assert gets(server) == ['/release/' + name]
    assert_same_weights(model, loaded_kat(path))
    # a different file name (another digest) is another file: the cache is keyed by name
    assert not [f for f in os.listdir(cache_dir()) if f.endswith(('.partial', '.tmp'))]


def test_a_digest_mismatch_is_refused_naming_the_url_both_digests_and_the_opt_out(hub_env):
    from mmkat.hub import WeightsError, resolve

    good, bad = pth_bytes(released_like_state_dict(seed=1)), pth_bytes(released_like_state_dict(seed=2))
    name = digest_named('kat_mini', good)
    with LoopbackFileServer() as server:
        server.files['/' + name] = bad  # damaged or replaced on the way
        url = f'{server.url}/{name}'
        with pytest.raises(WeightsError) as err:
            loaded_kat(url)
        message = str(err.value)
        assert url in message and sha256(good) in message and sha256(bad) in message
        assert 'check_digest=False' in message
        # the cached copy is checked on every use, not only after the download
        with pytest.raises(WeightsError, match='sha256'):
            resolve(url)
        assert len(gets(server)) == 1
        # the explicit opt-out loads it
        model = loaded_kat(url, check_digest=False)
    assert torch.equal(model.pos_embed.detach(), released_like_state_dict(seed=2)['pos_embed'])


def test_torch_hub_style_digest_prefixes_are_checked_too(hub_env):
    from mmkat.hub import WeightsError, expected_digest, resolve

    data = pth_bytes(released_like_state_dict())
    assert expected_digest(f'vit-small_20210928-{sha256(data)[:8]}.pth') == sha256(data)[:8]
    assert expected_digest('kat_small_patch16_224.pth') is None and expected_digest('model_20210928.pth') is None
    with LoopbackFileServer() as server:
        server.files[f'/ok-{sha256(data)[:8]}.pth'] = data
        server.files['/bad-0123abcd.pth'] = data
        assert open(resolve(f'{server.url}/ok-{sha256(data)[:8]}.pth'), 'rb').read() == data
        with pytest.raises(WeightsError, match='expected 0123abcd'):
            resolve(f'{server.url}/bad-0123abcd.pth')


def test_an_unreachable_server_names_the_url_and_the_path_to_put_the_file_at_which_is_then_used(hub_env):
    from mmkat.hub import WeightsError, resolve

    data = pth_bytes(released_like_state_dict())
    name = digest_named('kat_mini', data)
    server = LoopbackFileServer()  # serving from construction on
    url = f'{server.url}/{name}'
    server.stop()  # nothing listens on that port any more
    with pytest.raises(WeightsError) as err:
        loaded_kat(url)
    target = hub_env / 'torch' / 'hub' / 'checkpoints' / name
    assert url in str(err.value) and str(target) in str(err.value)
    assert not target.exists()
    target.write_bytes(data)  # placed by hand, as the message says: used with no network access
    assert resolve(url) == str(target)
    assert_same_weights(loaded_kat(url), loaded_kat(str(target)))
    # a 404 gives the same kind of message
    with LoopbackFileServer() as server, pytest.raises(WeightsError, match='HTTP 404 Not Found'):
        resolve(f'{server.url}/missing.pth')


def test_a_malicious_pickle_served_over_http_executes_nothing(hub_env):
    from mmkat.hub import load_checkpoint

    marker = hub_env / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (exec, (f'open({str(marker)!r}, "w").write("ran")', ))

    data = pth_bytes({'state_dict': {'x': torch.zeros(1)}, 'payload': Exploit()})
    name = digest_named('kat_evil', data)
    with LoopbackFileServer() as server:
        server.files['/' + name] = data
        url = f'{server.url}/{name}'
        with pytest.raises(RuntimeError, match='weights-only'):
            loaded_kat(url)
        with pytest.raises(RuntimeError, match='weights-only'):
            load_checkpoint(url)  # mmengine's load_from path
        from mmengine.runner.checkpoint import _load_checkpoint
        with pytest.raises(RuntimeError, match='weights-only'):
            _load_checkpoint(url)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- safetensors
@needs('safetensors')
def test_safetensors_and_pth_files_give_identical_weights_and_safetensors_needs_no_unpickling(hub_env, monkeypatch):
    sd = released_like_state_dict()
    pth, st = hub_env / 'kat.pth', hub_env / 'kat.safetensors'
    pth.write_bytes(pth_bytes({'model': sd}))
    st.write_bytes(safetensors_bytes(sd))
    from_pth = loaded_kat(str(pth))

    def no_pickle(*args, **kwargs):
        raise AssertionError('torch.load called for a safetensors file')

    monkeypatch.setattr(torch, 'load', no_pickle)
    assert_same_weights(from_pth, loaded_kat(str(st)))
    # by URL, and under a name without the extension (the format is read from the content)
    data = st.read_bytes()
    with LoopbackFileServer() as server:
        server.files['/w/' + digest_named('kat_mini', data, '.safetensors')] = data
        server.files['/w/kat_mini.bin'] = data
        assert_same_weights(from_pth, loaded_kat(f"{server.url}/w/{digest_named('kat_mini', data, '.safetensors')}"))
        assert_same_weights(from_pth, loaded_kat(f'{server.url}/w/kat_mini.bin'))


# ------------------------------------------------------------------------------------------------- sizes
def test_a_kat_t_file_in_a_kat_s_config_is_refused_naming_both_sizes(hub_env):
    from mmkat.models import KAT

    data = pth_bytes(released_like_state_dict(dims=192, layers=12, grid=14, classes=1000, patch=16))
    name = digest_named('kat_small_patch16_224', data)  # labelled small, holds tiny (the authors' swapped links)
    with LoopbackFileServer() as server:
        server.files['/' + name] = data
        url = f'{server.url}/{name}'
        model = KAT(arch='small', rational=dict(impl='reference'),
                    init_cfg=dict(type='Pretrained', checkpoint=url))
        with pytest.raises(ValueError, match=r'KAT-T \(192-dim, 12 blocks\) checkpoint, but this backbone is KAT-S '
                           r'\(384-dim, 12 blocks\)'):
            model.init_weights()
        out = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'convert_checkpoint.py'), url,
                              str(hub_env / 'out.pth'), '--task', 'cls'], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert 'KAT weights of size KAT-T (192-dim, 12 blocks)' in out.stdout


# ------------------------------------------------------------------------------------------ weights names
def test_the_released_weights_have_names_with_digest_named_urls_and_the_configs_use_them():
    from mmengine.config import Config

    from mmkat.hub import expected_digest, url_file_name, weight_names

    names = weight_names()
    assert sorted(RELEASED_NAMES) == sorted(names)
    for name, url in names.items():
        assert url.startswith('https://') and len(expected_digest(url_file_name(url))) == 64, url
        size = name.split('-')[1]
        assert url_file_name(url).startswith(f'kat_{size}_patch'), (name, url)
        assert ('-finetune_' in url) == ('vitft' in name), (name, url)
    for letter, size in (('t', 'tiny'), ('s', 'small'), ('b', 'base')):
        for task in ('mask_rcnn', 'upernet'):
            cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', f'{task}_kat_{letter}.py'))
            assert cfg.model.backbone.init_cfg.checkpoint == f'kat-{size}-p16_3rdparty_in1k' in names
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'kat', f'kat_{letter}_in1k_released.py'))
        assert cfg.load_from == f'kat-{size}-p16_3rdparty_in1k'


def test_a_weights_name_is_fetched_from_its_url_or_the_mirror_and_checked(hub_env, monkeypatch):
    from mmkat.hub import WeightsError, resolve, url_file_name, weight_names

    name = 'kat-tiny-p16_3rdparty_in1k'
    file_name = url_file_name(weight_names()[name])
    data = pth_bytes(released_like_state_dict())  # not the authors' file: its sha256 differs from the name's
    with LoopbackFileServer() as server:
        server.files['/mirror/' + file_name] = data
        monkeypatch.setenv('MMKAT_WEIGHTS_MIRROR', server.url + '/mirror/')
        with pytest.raises(WeightsError) as err:
            resolve(name)
        assert f'{server.url}/mirror/{file_name}' in str(err.value) and sha256(data) in str(err.value)
        path = resolve(name, check_digest=False)
        assert gets(server) == ['/mirror/' + file_name] and open(path, 'rb').read() == data
    with pytest.raises(FileNotFoundError, match='kat-tiny-p16_3rdparty_in1k'):
        resolve('kat-tiny-p16_in1k')  # a typo: the message lists the names


# ------------------------------------------------------------------------------------ mmengine and mmpretrain
def test_mmengine_load_checkpoint_reads_digest_urls_and_safetensors_in_the_openmmlab_layout(hub_env):
    from mmengine.runner.checkpoint import _load_checkpoint

    sd = released_like_state_dict()
    st = hub_env / 'released.safetensors'
    st.write_bytes(safetensors_bytes(sd))
    data = pth_bytes({'model': sd})
    with LoopbackFileServer() as server:
        server.files['/' + digest_named('kat_mini', data)] = data
        for ref in (str(st), f"{server.url}/{digest_named('kat_mini', data)}"):
            checkpoint = _load_checkpoint(ref)
            state = checkpoint['state_dict']
            assert torch.equal(state['backbone.blocks.0.mlp.act1.weight_denominator'],
                               sd['blocks.0.mlp.act1.weight_denominator'])
            assert torch.equal(state['head.fc.weight'], sd['head.weight']), ref
            assert not any(k.startswith('blocks.') for k in state)


@needs('mmpretrain')
def test_get_model_takes_a_weights_url_and_refuses_a_file_that_is_not_the_published_one(hub_env, monkeypatch):
    from mmpretrain import get_model

    import mmkat  # noqa: F401
    from mmkat.hub import WeightsError, url_file_name, weight_names

    sd = released_like_state_dict(dims=192, layers=12, grid=14, classes=1000, patch=16)
    data = pth_bytes(sd)
    with LoopbackFileServer() as server:
        server.files['/' + digest_named('kat_tiny_patch16_224', data)] = data
        model = get_model('kat-tiny-p16_3rdparty_in1k', pretrained=f"{server.url}/"
                          f"{digest_named('kat_tiny_patch16_224', data)}")
        assert torch.equal(model.head.fc.weight.detach(), sd['head.weight'])
        assert torch.equal(model.backbone.blocks[11].mlp.act2.weight_numerator.detach(),
                           sd['blocks.11.mlp.act2.weight_numerator'])
        # pretrained=True: the metafile's Weights URL (here its mirror) with the authors' digest in the name
        server.files['/' + url_file_name(weight_names()['kat-tiny-p16_3rdparty_in1k'])] = data
        monkeypatch.setenv('MMKAT_WEIGHTS_MIRROR', server.url)
        with pytest.raises(WeightsError, match='does not have the sha256 its name carries'):
            get_model('kat-tiny-p16_3rdparty_in1k', pretrained=True)


# -------------------------------------------------------------------------------------- Hugging Face Hub
@needs('huggingface_hub', 'safetensors')
def test_hf_hub_references_download_once_honour_revisions_and_work_offline_from_the_cache(hub_env, monkeypatch):
    from mmkat.hub import WeightsError, resolve

    sd_main, sd_v1 = released_like_state_dict(seed=3), released_like_state_dict(seed=4)
    with FakeHFEndpoint() as hf:
        hf.add_file('adamdad/kat_mini_patch8_32', 'model.safetensors', safetensors_bytes(sd_main))
        hf.add_file('adamdad/kat_mini_patch8_32', 'model.safetensors', safetensors_bytes(sd_v1), revision='v1')
        hf.add_file('someone/only_bin', 'pytorch_model.bin', pth_bytes(sd_v1))
        point_huggingface_hub(monkeypatch, hf, hub_env / 'hf')
        model = loaded_kat('hf_hub:adamdad/kat_mini_patch8_32')
        assert torch.equal(model.pos_embed.detach(), sd_main['pos_embed'])
        served = len(hf.requests)
        loaded_kat('hf-hub:adamdad/kat_mini_patch8_32')  # timm's spelling; cached
        assert torch.equal(loaded_kat('hf_hub:adamdad/kat_mini_patch8_32@v1').pos_embed.detach(), sd_v1['pos_embed'])
        assert torch.equal(loaded_kat('hf_hub:someone/only_bin').pos_embed.detach(), sd_v1['pos_embed'])
        with pytest.raises(WeightsError, match='someone/nothing'):
            resolve('hf_hub:someone/nothing')
        assert served > 0
    # the endpoint is gone: cached files are used offline, others are refused naming the repository and the cache
    point_huggingface_hub(monkeypatch, hf, hub_env / 'hf', offline=True)
    assert torch.equal(loaded_kat('hf_hub:adamdad/kat_mini_patch8_32').pos_embed.detach(), sd_main['pos_embed'])
    with pytest.raises(WeightsError) as err:
        resolve('hf_hub:adamdad/kat_other')
    assert 'adamdad/kat_other' in str(err.value) and str(hub_env / 'hf') in str(err.value)


# ----------------------------------------------------------------------------------------------- end to end
@needs('mmdet')
def test_train_py_starts_mask_rcnn_kat_s_from_its_weights_name_with_no_manual_step(hub_env):
    """tools/train.py configs/kat/mask_rcnn_kat_s.py as written: the backbone's weights name resolves (here
    to the loopback mirror), downloads into the cache and loads; one training iteration on the demo scenes."""
    from mmkat.hub import url_file_name, weight_names

    sd = released_like_state_dict(dims=384, layers=12, grid=14, classes=1000, patch=16)
    file_name = url_file_name(weight_names()['kat-small-p16_3rdparty_in1k'])
    scenes = hub_env / 'scenes'
    subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'data', 'make_demo_scenes.py'), '--out', str(scenes),
                    '--train', '2', '--val', '1'], check=True, capture_output=True, cwd=ROOT)
    train_set = 'train_dataloader.dataset.dataset.'  # the config's own data, moved to the demo scenes
    options = [train_set + 'data_root=' + str(scenes) + '/', train_set + 'ann_file=annotations/instances_train.json',
               train_set + 'data_prefix.img=images/train/',
               train_set + 'metainfo.classes=(disc,ring,square,triangle,cross)',
               'train_cfg.max_iters=1', 'train_dataloader.batch_size=1', 'train_dataloader.num_workers=0',
               'train_dataloader.persistent_workers=False', 'optim_wrapper.type=OptimWrapper',  # AMP needs a GPU
               'model.backbone.init_cfg.check_digest=False',  # the served file is not the authors'
               *[f'{stage}_{part}=None' for stage in ('val', 'test') for part in ('cfg', 'dataloader', 'evaluator')]]
    with LoopbackFileServer() as server:
        server.files['/' + file_name] = pth_bytes(sd)
        config = osp.join(ROOT, 'configs', 'kat', 'mask_rcnn_kat_s.py')
        out = subprocess.run(
            [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(hub_env / 'work'),
             '--cfg-options', *options],
            capture_output=True, text=True, cwd=ROOT, timeout=900,
            env=dict(os.environ, MMKAT_WEIGHTS_MIRROR=server.url))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert gets(server) == ['/' + file_name]
    log = out.stdout + out.stderr
    assert 'KAT: loaded kat-small-p16_3rdparty_in1k' in log and 'Saving checkpoint at 1 iterations' in log
    assert (hub_env / 'torch' / 'hub' / 'checkpoints' / file_name).is_file()


@needs('mmpretrain')
def test_test_py_evaluates_a_url_given_as_load_from_and_names_a_released_local_file_it_cannot_place(hub_env):
    """tools/test.py without CHECKPOINT tests the config's load_from (here a digest-named URL of a released-
    layout file, read in the OpenMMLab layout); a local released .pth, which mmengine would read in timm's key
    names, is refused with the way out."""
    sd = released_like_state_dict(dims=64, layers=4, grid=8, classes=8, patch=4)  # the demo model's shapes
    data = pth_bytes(sd)
    local = hub_env / 'kat_demo_released.pth'
    local.write_bytes(data)
    tool = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), osp.join(ROOT, 'configs', 'kat', 'demo',
                                                                          'kat_demo_shapes.py')]
    with LoopbackFileServer() as server:
        server.files['/' + digest_named('kat_demo', data)] = data
        url = f"{server.url}/{digest_named('kat_demo', data)}"
        out = subprocess.run(tool + ['--work-dir', str(hub_env / 'work'), '--cfg-options', f'load_from={url}'],
                             capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert 'accuracy/top1' in out.stdout + out.stderr
    out = subprocess.run(tool + [str(local), '--work-dir', str(hub_env / 'work2')], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ), timeout=600)
    assert out.returncode == 1
    assert 'released KAT / timm ViT state dict' in out.stderr and 'convert_checkpoint.py' in out.stderr


def test_train_py_names_the_option_when_the_backbone_weights_cannot_be_had(hub_env):
    """A pretrained reference that cannot be downloaded, or a file refused by its digest, stops tools/train.py
    with one line naming model.backbone.init_cfg.checkpoint, before the work dir is written."""
    data = pth_bytes(released_like_state_dict(dims=64, layers=4, grid=8, classes=8, patch=4))
    config = osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')
    with LoopbackFileServer() as server:
        server.files['/' + digest_named('kat_demo', b'other bytes')] = data
        for url, expected in ((f'{server.url}/gone.pth', 'HTTP 404'),
                              (f"{server.url}/{digest_named('kat_demo', b'other bytes')}", 'sha256')):
            out = subprocess.run(
                [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(hub_env / 'work'),
                 '--cfg-options', 'model.backbone.init_cfg.type=Pretrained',
                 f'model.backbone.init_cfg.checkpoint={url}'],
                capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=600)
            assert out.returncode == 1, out.stderr[-2000:]
            assert 'model.backbone.init_cfg.checkpoint:' in out.stderr and expected in out.stderr
            assert 'Traceback' not in out.stderr
    assert not (hub_env / 'work').exists()
