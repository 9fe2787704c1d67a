"""Optimizer wrapper constructors (registered on mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``)."""
from .layer_decay import KATLayerDecayOptimWrapperConstructor

__all__ = ['KATLayerDecayOptimWrapperConstructor']
