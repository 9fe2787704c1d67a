"""Training and testing helpers for the tools (no models are registered here)."""
from .checkpoint import allow_mmengine_checkpoints
from .optimizers import KATLayerDecayOptimWrapperConstructor

__all__ = ['allow_mmengine_checkpoints', 'KATLayerDecayOptimWrapperConstructor']
