# The out-of-the-box job: a small KAT learns 8 shape classes that mmkat draws itself (KATDemoShapes: no
# download), on CPU in a few minutes, and reports top-1 on a held-out split.
#   python tools/train.py configs/kat/demo/kat_demo_shapes.py
# Same model and recipe with the GELU MLP (the ViT baseline): --cfg-options model.backbone.mlp=gelu
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)

img_size = 32
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='KAT',
        arch=dict(embed_dims=64, num_layers=4, num_heads=2, mlp_ratio=4.),
        img_size=img_size,
        patch_size=4,
        out_type='cls_token',
        drop_path_rate=0.05,
        mlp='kan'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=8,
        in_channels=64,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)),
)
data_preprocessor = dict(num_classes=8, mean=[127.5, 127.5, 127.5], std=[64.0, 64.0, 64.0], to_rgb=False)

train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type='KATDemoShapes', split='train', num_per_class=250, img_size=img_size,
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    dataset=dict(type='KATDemoShapes', split='val', num_per_class=50, img_size=img_size, pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.cls_token': dict(decay_mult=0.0), '.pos_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=8, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=8, val_interval=2)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2),
)
randomness = dict(seed=0, deterministic=False)
