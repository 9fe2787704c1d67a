# The GELU-MLP twin of kat_mini_fmnist.py: the same-size ViT, identical data, recipe and seed.
_base_ = ['./kat_mini_fmnist.py']

model = dict(backbone=dict(mlp='gelu'))
