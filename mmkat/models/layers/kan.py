"""The channel mixers of a KAT block: the group-rational KAN block, and the GELU MLP of the ViT baseline.

Both keep timm's module names (``fc1``/``fc2``, ``act1``/``act2`` for KAN, ``act`` for the MLP), so the
released KAT checkpoints and plain timm ViT checkpoints load without renaming.
"""
from typing import Union

import torch
from torch import nn

from .group_rational import GroupRational


class KAN(nn.Module):
    """Two group-rational KAN layers: act1 -> drop1 -> fc1 -> act2 -> drop2 -> fc2.

    ``act1`` (on ``in_features`` channels) starts as the identity, so the ViT MLP weights can be copied
    into fc1/fc2; ``act2`` (on ``hidden_features`` channels) starts as a rational fit of swish, as
    released.

    Args:
        in_features: channels in and out.
        hidden_features: channels after fc1 (4x in KAT).
        groups: channel groups of each rational (8 in KAT).
        act1_init / act2_init: rational presets ('identity', 'swish', 'gelu') or coefficient dicts.
        impl: group-rational implementation, see :func:`mmkat.ops.group_rational`.
        drop: dropout after each activation.
    """

    def __init__(self,
                 in_features: int,
                 hidden_features: int,
                 groups: int = 8,
                 act1_init: Union[str, dict] = 'identity',
                 act2_init: Union[str, dict] = 'swish',
                 impl: str = 'auto',
                 drop: float = 0.):
        super().__init__()
        for name, channels in (('in_features', in_features), ('hidden_features', hidden_features)):
            if channels % groups:
                raise ValueError(f'KAN: {name} ({channels}) must be divisible by the rational groups ({groups})')
        self.act1 = GroupRational(groups, act1_init, num_channels=in_features, impl=impl)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act2 = GroupRational(groups, act2_init, num_channels=hidden_features, impl=impl)
        self.drop2 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(self.drop1(self.act1(x)))
        return self.fc2(self.drop2(self.act2(x)))


class Mlp(nn.Module):
    """The ViT MLP, fc1 -> GELU -> drop1 -> fc2 -> drop2, the baseline KAT is compared with."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
