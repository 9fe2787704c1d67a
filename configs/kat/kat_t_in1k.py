# KAT-T on ImageNet-1k, the released recipe (DeiT-style, timm): 8 GPUs x 128 images = batch 1024, AdamW lr 1e-3,
# weight decay 0.05 (the 2-D rational coefficients are decayed too, as released), 300 epochs cosine after a
# 5-epoch warmup, mixup 0.8 / cutmix 1.0, label smoothing 0.1, RandAugment m9-mstd0.5, random erasing 0.25,
# AMP, EMA 0.9999, drop path 0.1. Paper: 74.6 top-1 from scratch.
#   bash tools/dist_train.sh configs/kat/kat_t_in1k.py 8
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='KAT',
        arch='tiny',
        img_size=224,
        patch_size=16,
        out_type='cls_token',
        drop_path_rate=0.1,
        init_mode='released'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128, num_workers=8, persistent_workers=True)
val_dataloader = dict(batch_size=128, num_workers=8, persistent_workers=True)
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    # timm decays every tensor of 2+ dims except pos_embed / cls_token: norms and biases (1-D) are not decayed
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0),
        }),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)

custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=3, save_best='auto'))
