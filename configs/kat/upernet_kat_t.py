# KAT-T UperNet on ADE20K: the recipe of upernet_kat_b.py with the tiny backbone.
#   python tools/train.py configs/kat/upernet_kat_t.py
_base_ = ['./upernet_kat_b.py']

pretrained = 'kat-tiny-p16_3rdparty_in1k'
embed_dims = 192
model = dict(
    backbone=dict(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims),
)
