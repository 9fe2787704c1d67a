# kat_t_fmnist.py with the paper's variance-preserving init of the KAN linears (W ~ N(0, alpha / fan_in),
# alpha = 1 / E[F(x)^2] of the rational feeding the layer) in place of the released timm init.
_base_ = ['./kat_t_fmnist.py']

model = dict(backbone=dict(init_mode='variance_preserving'))
