# KAT-S UperNet on ADE20K: the recipe of upernet_kat_b.py with the small backbone.
#   python tools/train.py configs/kat/upernet_kat_s.py
_base_ = ['./upernet_kat_b.py']

pretrained = 'kat-small-p16_3rdparty_in1k'
embed_dims = 384
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims),
)
