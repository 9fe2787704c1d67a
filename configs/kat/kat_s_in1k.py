# KAT-S on ImageNet-1k, the released recipe (see kat_t_in1k.py). Paper: 81.2 top-1 from scratch.
_base_ = ['./kat_t_in1k.py']

model = dict(backbone=dict(arch='small', drop_path_rate=0.1), head=dict(in_channels=384))
