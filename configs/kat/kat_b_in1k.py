# KAT-B on ImageNet-1k, the released recipe (see kat_t_in1k.py). Paper: 82.3 top-1 from scratch.
_base_ = ['./kat_t_in1k.py']

model = dict(backbone=dict(arch='base', drop_path_rate=0.4), head=dict(in_channels=768))
