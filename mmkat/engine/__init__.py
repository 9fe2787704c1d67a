"""Training and testing helpers for the tools (no models are registered here)."""
from .checkpoint import allow_mmengine_checkpoints

__all__ = ['allow_mmengine_checkpoints']
