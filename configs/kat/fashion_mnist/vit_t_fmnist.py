# The baseline for kat_t_fmnist.py: the same-size ViT (GELU MLP in place of the KAN, timm's ViT init), the
# identical data, recipe and seed.
_base_ = ['./kat_t_fmnist.py']

model = dict(backbone=dict(mlp='gelu'))
