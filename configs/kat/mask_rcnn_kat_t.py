# KAT-T Mask R-CNN on COCO: the recipe of mask_rcnn_kat_b.py with the tiny backbone.
#   python tools/train.py configs/kat/mask_rcnn_kat_t.py
_base_ = ['./mask_rcnn_kat_b.py']

pretrained = 'kat-tiny-p16_3rdparty_in1k'
embed_dims = 192
model = dict(
    backbone=dict(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(backbone_channel=embed_dims),  # the levels' in_channels follow from it
)
