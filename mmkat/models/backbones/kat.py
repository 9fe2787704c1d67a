"""KAT: the Kolmogorov-Arnold Transformer backbone for classification, detection and segmentation.

One class serves every task (``out_type``/``out_indices`` pick what the neck or head needs), loads the
released timm checkpoints under their own key names, and builds the same-size GELU ViT with ``mlp='gelu'``.
"""
import math
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

from mmkat.ops import IMPLEMENTATIONS
from ..checkpoint import backbone_state_dict, checkpoint_size, size_name
from ..layers.attention import resize_relative_table
from ..layers.block import KATBlock
from ..layers.group_rational import GroupRational
from ..weight_init import mimetic_attention_init_, variance_preserving_init_, vit_linear_init_

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap')
INIT_MODES = ('released', 'variance_preserving', 'vit')


def _pair(value, name: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f'KAT: {name} must be a positive int or a pair of them, got {value!r}')
    return pair


@MODELS.register_module()
class KAT(BaseModule):
    """Kolmogorov-Arnold Transformer (Yang & Wang, ICLR 2025): a ViT whose MLPs are group-rational KANs.

    Args:
        arch: 'tiny' / 'small' / 'base' (also 't', 's', 'b', 'kat-t', ...) or a dict with embed_dims,
            num_layers, num_heads and optionally mlp_ratio.
        img_size: the input size the position embedding is made for (224 for the released models). Other
            input sizes work: the embedding is interpolated to the actual patch grid every forward.
        patch_size: patch side; inputs whose sides are not multiples of it are zero-padded bottom/right.
        in_channels: image channels.
        out_indices: blocks whose output is returned (negative indices count from the end).
        out_type: 'cls_token' ([B, C]), 'featmap' ([B, C, h, w]), 'avg_featmap' ([B, C], mean of patch
            tokens) or 'raw' ([B, N, C] tokens, cls token first when present).
        with_cls_token: prepend the cls token (the released models have one; ViTDet-style dense models
            drop it, the position embedding keeps its cls slot so checkpoints still load).
        final_norm: apply the final LayerNorm ('norm') to the output of the last block.
        drop_rate / attn_drop_rate: dropout after the position embedding, in the KAN/MLP and after the
            attention projection / on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 at the first block to this value.
        qkv_bias: bias on qkv (True, as released).
        norm_eps: LayerNorm eps (1e-6, as released).
        mlp: 'kan' (KAT) or 'gelu' (the plain ViT of the same size, the baseline).
        rational: options of the group-rational activations, dict(groups=8, act1_init='identity',
            act2_init='swish', impl='auto', recompute=True, fold_bias=False); ``recompute`` runs each block's
            act1 -> fc1 as one op that recomputes act1's output in backward instead of keeping it (see
            :class:`KAN`); under torch.compile each block checkpoints norm2 -> act1 -> fc1 instead (see
            :class:`KATBlock`); ``fold_bias`` adds fc1's bias inside act2, whose backward then also gives the
            bias gradient (see :class:`KAN`).
        window_size: 0 (global attention everywhere) or the window side, in patches, of ViTDet's window
            attention; blocks in ``global_attn_indexes`` keep global attention.
        global_attn_indexes: blocks with global attention when window_size > 0 (ViTDet: 2, 5, 8, 11).
        use_rel_pos: add decomposed relative position terms in every block (ViTDet).
        interpolate_mode: how the position embedding is resized ('bicubic').
        frozen_stages: freeze the patch embedding, tokens and the first ``frozen_stages`` blocks (all blocks
            and the final norm when equal to the depth); kept frozen and in eval mode across ``train()``.
        with_cp: activation checkpointing of every block (saves memory, costs a second forward).
        init_mode: 'released' (timm ViT init + mimetic attention init, as the released KAT models),
            'variance_preserving' (the paper's init of the KAN linears, the rest as released) or 'vit' (timm's
            ViT init, no mimetic attention). None picks 'released' for KAT and 'vit' for the GELU ViT.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=PATH)`` loads a released KAT
            or timm ViT file (plain or wrapped in model / state_dict / state_dict_ema), or a full mmkat
            model checkpoint: the classifier is dropped, the position embedding resized, missing and
            unexpected keys logged, shape mismatches fail. Add ``prefer_ema=True`` to load EMA weights.
    """

    arch_zoo = {
        **dict.fromkeys(['t', 'tiny', 'kat-t', 'kat_tiny'],
                        dict(embed_dims=192, num_layers=12, num_heads=3, mlp_ratio=4.)),
        **dict.fromkeys(['s', 'small', 'kat-s', 'kat_small'],
                        dict(embed_dims=384, num_layers=12, num_heads=6, mlp_ratio=4.)),
        **dict.fromkeys(['b', 'base', 'kat-b', 'kat_base'],
                        dict(embed_dims=768, num_layers=12, num_heads=12, mlp_ratio=4.)),
    }
    num_extra_tokens = 1  # the cls slot of the position embedding, kept even without a cls token

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'cls_token',
                 with_cls_token: bool = True,
                 final_norm: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 mlp: str = 'kan',
                 rational: Optional[dict] = None,
                 window_size: int = 0,
                 global_attn_indexes: Sequence[int] = (),
                 use_rel_pos: bool = False,
                 interpolate_mode: str = 'bicubic',
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 init_mode: Optional[str] = None,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.num_heads = self.arch_settings['num_heads']
        self.img_size = _pair(img_size, 'img_size')
        patch_h, patch_w = _pair(patch_size, 'patch_size')
        self.patch_size = patch_h
        if patch_w != patch_h:
            raise ValueError(f'KAT: only square patches are supported, got patch_size={patch_size!r}')
        self.patch_grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        if min(self.patch_grid) < 1:
            raise ValueError(f'KAT: img_size {self.img_size} is smaller than one patch ({self.patch_size})')

        if out_type not in OUT_TYPES:
            raise ValueError(f'KAT: out_type must be one of {OUT_TYPES}, got {out_type!r}')
        if out_type == 'cls_token' and not with_cls_token:
            raise ValueError("KAT: out_type='cls_token' needs with_cls_token=True")
        self.out_type = out_type
        self.out_indices = self._parse_out_indices(out_indices)
        self.with_cls_token = with_cls_token
        self.final_norm = final_norm
        if mlp not in ('kan', 'gelu'):
            raise ValueError(f"KAT: mlp must be 'kan' (KAT) or 'gelu' (the ViT baseline), got {mlp!r}")
        self.mlp = mlp
        self.rational = self._parse_rational(rational) if mlp == 'kan' else None
        if init_mode is None:
            init_mode = 'released' if mlp == 'kan' else 'vit'
        if init_mode not in INIT_MODES or (init_mode == 'variance_preserving' and mlp != 'kan'):
            raise ValueError(f"KAT: init_mode must be one of {INIT_MODES} ('variance_preserving' only with "
                             f"mlp='kan'), got {init_mode!r}")
        self.init_mode = init_mode
        self.interpolate_mode = interpolate_mode
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_layers:
            raise ValueError(f'KAT: frozen_stages must be an int in [-1, {self.num_layers}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp

        self.window_size = int(window_size)
        self.global_attn_indexes = tuple(self._normalise_index(i, 'global_attn_indexes')
                                         for i in global_attn_indexes)
        if self.window_size < 0:
            raise ValueError(f'KAT: window_size must be >= 0, got {window_size}')
        windowed = [i for i in range(self.num_layers) if self.window_size and i not in self.global_attn_indexes]
        if (windowed or use_rel_pos) and with_cls_token:
            raise ValueError('KAT: window attention and relative positions work on the patch grid; set '
                             'with_cls_token=False (the ViTDet setting)')
        self.use_rel_pos = use_rel_pos

        dims = self.embed_dims
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, dims, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims))
        if not with_cls_token:
            # kept so that released checkpoints load unchanged, but never used: frozen, so that
            # DistributedDataParallel (which stops on a trainable parameter that gets no gradient) leaves it out
            self.cls_token.requires_grad_(False)
        num_patches = self.patch_grid[0] * self.patch_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_extra_tokens, dims))
        self.pos_drop = nn.Dropout(drop_rate)

        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
                raise ValueError(f'KAT: {name} must be a number in [0, 1), got {rate!r}')
        rates = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.blocks = nn.ModuleList()
        for i in range(self.num_layers):
            window = self.window_size if i in windowed else 0
            self.blocks.append(KATBlock(
                dims, self.num_heads, self.arch_settings['mlp_ratio'], mlp=mlp, rational=self.rational,
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i],
                norm_eps=norm_eps, window_size=window, use_rel_pos=use_rel_pos,
                rel_pos_size=window or max(self.patch_grid)))
        self.norm = nn.LayerNorm(dims, eps=norm_eps) if final_norm else nn.Identity()

        self._register_load_state_dict_pre_hook(self._resize_on_load)
        self._freeze_stages()

    # ------------------------------------------------------------------ configuration
    def _parse_arch(self, arch) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise KeyError(f'KAT: unknown arch {arch!r}; expected one of tiny, small, base '
                               f'(or {sorted(self.arch_zoo)}) or a dict(embed_dims, num_layers, num_heads)')
            return dict(self.arch_zoo[key])
        if not isinstance(arch, dict):
            raise TypeError(f'KAT: arch must be a name or a dict, got {type(arch).__name__}')
        required = {'embed_dims', 'num_layers', 'num_heads'}
        if not required <= set(arch) or set(arch) - required - {'mlp_ratio'}:
            raise KeyError(f'KAT: a custom arch needs keys {sorted(required)} (and optionally mlp_ratio), '
                           f'got {sorted(arch)}')
        settings = {'mlp_ratio': 4., **arch}
        if settings['embed_dims'] % settings['num_heads']:
            raise ValueError(f"KAT: embed_dims ({settings['embed_dims']}) must be divisible by num_heads "
                             f"({settings['num_heads']})")
        return settings

    def _normalise_index(self, index, what: str) -> int:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f'KAT: {what} must hold ints, got {index!r}')
        if not -self.num_layers <= index < self.num_layers:
            raise IndexError(f'KAT: {what} entry {index} is out of range for {self.num_layers} blocks '
                             f'(expected -{self.num_layers} .. {self.num_layers - 1})')
        return index % self.num_layers

    def _parse_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, Sequence) or not out_indices:
            raise TypeError(f'KAT: out_indices must be an int or a non-empty sequence of ints, got {out_indices!r}')
        indices = [self._normalise_index(i, 'out_indices') for i in out_indices]
        if len(set(indices)) != len(indices):
            raise ValueError(f'KAT: out_indices {list(out_indices)} name a block twice')
        return tuple(indices)

    @staticmethod
    def _parse_rational(rational: Optional[dict]) -> dict:
        options = dict(groups=8, act1_init='identity', act2_init='swish', impl='auto', recompute=True,
                       fold_bias=False)
        unknown = set(rational or {}) - set(options)
        if unknown:
            raise KeyError(f'KAT: unknown rational options {sorted(unknown)}; expected {sorted(options)}')
        options.update(rational or {})
        groups = options['groups']
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f'KAT: rational.groups must be a positive int (8 in the released models), got {groups!r}')
        if options['impl'] not in IMPLEMENTATIONS:
            raise ValueError(f"KAT: rational impl must be one of {IMPLEMENTATIONS}, got {options['impl']!r}")
        for flag in ('recompute', 'fold_bias'):
            if not isinstance(options[flag], bool):
                raise ValueError(f'KAT: rational.{flag} must be True or False, got {options[flag]!r}')
        return options

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        pretrained = self._pretrained_cfg()
        if pretrained is not None and pretrained['checkpoint'] is None:
            # `pretrained = None` in a config: no pretraining, the backbone starts from its own init
            print_log("KAT: init_cfg=dict(type='Pretrained', checkpoint=None): no pretrained weights, the "
                      f"backbone starts from its '{self.init_mode}' init", logger='current')
            self.init_from_scratch()
            self._is_init = True
        elif pretrained is None:
            self.init_from_scratch()
            if self.init_cfg:
                super().init_weights()  # any other init_cfg (e.g. TruncNormal) applies on top
            self._is_init = True
        else:
            # what the checkpoint does not hold (e.g. the rationals of a ViT) keeps this init; the costly
            # mimetic init is skipped since the checkpoint overwrites every attention weight
            self.init_from_scratch(attention=False)
            self.load_pretrained(pretrained['checkpoint'], prefer_ema=pretrained.get('prefer_ema', False),
                                 allow_missing=pretrained.get('allow_missing', False),
                                 map_location=pretrained.get('map_location', 'cpu'),
                                 check_digest=pretrained.get('check_digest', True))
            self._is_init = True

    def _pretrained_cfg(self) -> Optional[dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if len(pretrained) > 1:
            raise ValueError('KAT: init_cfg holds more than one Pretrained entry')
        if pretrained:
            if len(cfgs) > 1:
                raise ValueError('KAT: a Pretrained init_cfg cannot be combined with other init types')
            extra = set(pretrained[0]) - {'type', 'checkpoint', 'prefer_ema', 'map_location', 'allow_missing',
                                          'check_digest'}
            if extra or 'checkpoint' not in pretrained[0]:
                raise KeyError(f"KAT: init_cfg=dict(type='Pretrained', checkpoint=PATH_URL_OR_NAME[, "
                               f'prefer_ema=False, allow_missing=False, check_digest=True]), got {pretrained[0]}')
            return pretrained[0]
        return None

    @torch.no_grad()
    def init_from_scratch(self, generator: Optional[torch.Generator] = None, attention: bool = True) -> None:
        """The init chosen by ``init_mode`` (see the class doc); rationals get their presets.
        ``attention=False`` skips the mimetic attention init (timm's init is used instead)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.patch_embed.proj.reset_parameters()
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    vit_linear_init_(module)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()
                elif isinstance(module, GroupRational):
                    module.reset_parameters()  # back to its preset
            if attention and self.init_mode in ('released', 'variance_preserving'):
                mimetic_attention_init_(block.attn.qkv, block.attn.proj, self.num_heads, generator)
            if self.init_mode == 'variance_preserving':
                variance_preserving_init_(block.mlp.fc1, self.rational['act1_init'])
                variance_preserving_init_(block.mlp.fc2, self.rational['act2_init'])
            if self.use_rel_pos:
                nn.init.zeros_(block.attn.rel_pos_h)
                nn.init.zeros_(block.attn.rel_pos_w)
        if self.final_norm:
            self.norm.reset_parameters()

    def load_pretrained(self, checkpoint: Union[str, dict], prefer_ema: bool = False, allow_missing: bool = False,
                        map_location='cpu', check_digest: bool = True) -> Dict[str, list]:
        """Load a released KAT / timm ViT / mmkat checkpoint into this backbone: a loaded dict, or any weights
        reference of :mod:`mmkat.hub` (a .pth or .safetensors path, an http(s) URL, ``hf_hub:OWNER/REPO``, an
        mmkat weights name such as ``kat-small-p16_3rdparty_in1k``), downloaded into the cache once and
        checked against the digest its file name carries unless ``check_digest=False``.

        Classifier keys are dropped, the position embedding and relative tables are resized, unexpected keys
        are logged. Refused: any shape mismatch, NaN or inf in a tensor, and a checkpoint that leaves backbone
        tensors unloaded, except the ones no released file holds (the rationals of a ViT checkpoint, the
        ViTDet relative-position tables) unless ``allow_missing=True`` (then they keep their init and are
        logged). ``map_location`` is where the file's tensors are read to (torch.load's). Returns the report.
        """
        source = checkpoint if isinstance(checkpoint, str) else '<dict>'
        if isinstance(checkpoint, str):
            from mmkat.hub import read_weights
            checkpoint = read_weights(checkpoint, map_location=map_location, check_digest=check_digest)
        state_dict, report = backbone_state_dict(checkpoint, prefer_ema)
        if report['kind'] == 'kat' and self.mlp != 'kan':
            raise ValueError(f"KAT: {source} is a KAT checkpoint but this backbone has mlp='gelu'")
        self._check_checkpoint_size(state_dict, source)
        non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if non_finite:
            raise ValueError(f'KAT: {source} holds NaN or inf in {len(non_finite)} tensors '
                             f'({", ".join(non_finite[:5])}{", ..." if len(non_finite) > 5 else ""}); refusing to '
                             'load it')
        own = self.state_dict()
        unloaded = [k for k in own if k not in state_dict and not re.search(r'(^|\.)rel_pos_[hw]$', k)
                    and not (report['kind'] == 'vit' and ('.act1.' in k or '.act2.' in k))]
        if unloaded and not allow_missing:
            raise ValueError(
                f'KAT: {source} leaves {len(unloaded)} of {len(own)} backbone tensors unloaded '
                f'({", ".join(unloaded[:5])}{", ..." if len(unloaded) > 5 else ""}): is it a checkpoint of this '
                "backbone? Pass allow_missing=True (init_cfg=dict(type='Pretrained', ..., allow_missing=True)) "
                'to load it and keep their init')
        result = self.load_state_dict(state_dict, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        print_log(f'KAT: loaded {source} ({report["kind"]} weights from {report["source"]}); dropped the '
                  f'classifier keys {report["dropped"]}', logger='current')
        if report['kind'] == 'vit':
            rationals = [k for k in missing if '.act1.' in k or '.act2.' in k]
            missing = [k for k in missing if k not in rationals]
            if rationals:
                print_log(f'KAT: {len(rationals)} rational coefficient tensors are not in the ViT checkpoint and '
                          'keep their init (act1 = identity, so the ViT MLP starts unchanged)', logger='current')
        if missing:
            print_log(f'KAT: missing keys (kept their init): {missing}', logger='current', level=30)
        if unexpected:
            print_log(f'KAT: unexpected keys (ignored): {unexpected}', logger='current', level=30)
        return dict(missing=missing, unexpected=unexpected, dropped=report['dropped'])

    def _check_checkpoint_size(self, state_dict: Dict[str, torch.Tensor], source: str) -> None:
        """A checkpoint of another width or depth: say which size it is, not a list of shape mismatches."""
        dims, depth = checkpoint_size(state_dict)
        depth = depth or self.num_layers
        # fewer blocks than the model: the unloaded-tensor check below lists them (and allow_missing applies)
        if (dims is None or dims == self.embed_dims) and depth <= self.num_layers:
            return
        raise ValueError(f'KAT: {source} is a {size_name(dims or self.embed_dims, depth)} checkpoint, but this '
                         f'backbone is {size_name(self.embed_dims, self.num_layers)}: pick the matching arch '
                         "(model.backbone.arch='tiny' | 'small' | 'base') or the matching file")

    def _resize_on_load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
        """load_state_dict pre-hook: resize a position embedding made for another grid (and relative
        position tables made for another window) to this model's."""
        key = prefix + 'pos_embed'
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            old = state_dict[key]
            if old.dim() != 3 or old.shape[-1] != self.embed_dims:
                return  # a real mismatch: load_state_dict reports it
            grid_tokens = old.shape[1] - self.num_extra_tokens
            extra = old[:, :self.num_extra_tokens]
            if math.isqrt(grid_tokens) ** 2 != grid_tokens:  # saved without a cls slot
                grid_tokens, extra = old.shape[1], self.pos_embed.detach()[:, :self.num_extra_tokens].to(old)
            side = math.isqrt(grid_tokens)
            if side * side != grid_tokens:
                return  # not a square grid: load_state_dict reports the mismatch
            grid = self.resize_pos_embed(old[:, -grid_tokens:], (side, side), self.patch_grid)
            state_dict[key] = torch.cat([extra, grid], dim=1)
            print_log(f'KAT: resized the position embedding from {side}x{side} to '
                      f'{self.patch_grid[0]}x{self.patch_grid[1]} patches', logger='current')
        for name, tensor in self.named_parameters():
            if '.rel_pos_' in name and prefix + name in state_dict:
                table = state_dict[prefix + name]
                if table.shape != tensor.shape and table.dim() == 2 and table.shape[1] == tensor.shape[1]:
                    state_dict[prefix + name] = resize_relative_table(table, tensor.shape[0])

    def resize_pos_embed(self, grid_embed: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
        """[1, old_h * old_w, C] -> [1, new_h * new_w, C] by ``interpolate_mode`` interpolation."""
        if tuple(old) == tuple(new):
            return grid_embed
        C = grid_embed.shape[-1]
        image = grid_embed.reshape(1, old[0], old[1], C).permute(0, 3, 1, 2)
        image = F.interpolate(image.float(), size=tuple(new), mode=self.interpolate_mode, align_corners=False)
        return image.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], C).to(grid_embed.dtype)

    # ------------------------------------------------------------------ training behaviour
    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed, self.pos_drop] + list(self.blocks[:self.frozen_stages])
        if self.frozen_stages == self.num_layers:
            frozen.append(self.norm)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        self.cls_token.requires_grad = False
        self.pos_embed.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """(depth, number of depths) of a parameter for layer-wise lr decay: 0 for the embeddings, i + 1 for
        block i, num_layers + 1 for the final norm and anything outside the backbone (e.g. the head)."""
        num_depths = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_depths - 1, num_depths
        name = param_name[len(prefix):]
        if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed'):
            return 0, num_depths
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1, num_depths
        return num_depths - 1, num_depths

    # ------------------------------------------------------------------ forward
    def _tokens_pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        grid_embed = self.resize_pos_embed(pos[:, self.num_extra_tokens:], self.patch_grid, grid)
        if self.with_cls_token:
            return torch.cat([pos[:, :self.num_extra_tokens], grid_embed], dim=1)
        return grid_embed

    def _format(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, 1:] if self.with_cls_token else x
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        B, _, C = patches.shape
        return patches.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f'KAT: expected images of shape [B, {self.patch_embed.proj.in_channels}, H, W], '
                             f'got {tuple(x.shape)}')
        pad_h, pad_w = (-x.shape[2]) % self.patch_size, (-x.shape[3]) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.patch_embed.proj(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.with_cls_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._tokens_pos_embed(grid))

        outs = []
        for i, block in enumerate(self.blocks):
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, grid, use_reentrant=False)
            else:
                x = block(x, grid)
            if i == self.num_layers - 1:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._format(x, grid))
        return tuple(outs)

    def extra_repr(self) -> str:
        return (f'arch={self.arch_settings}, mlp={self.mlp}, out_type={self.out_type}, '
                f'out_indices={self.out_indices}, init_mode={self.init_mode}')
