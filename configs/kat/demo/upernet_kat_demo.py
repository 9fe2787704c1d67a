# UperNet with a small KAT on the demo scenes that mmkat draws itself (background + 5 shape classes, label maps,
# no download): trains and evaluates mIoU (IoUMetric) on CPU in minutes. The segmentor is the one of
# upernet_kat_b.py scaled down: MultiLevelNeck to four scales, UPerHead + auxiliary FCN head, layer-wise lr decay.
#   python tools/data/make_demo_scenes.py                     # once: data/kat_demo_scenes (about 10 s)
#   python tools/train.py configs/kat/demo/upernet_kat_demo.py
# The GELU-MLP twin (a plain ViT of the same size): --cfg-options model.backbone.mlp=gelu
_base_ = [
    'mmseg::_base_/models/upernet_vit-b16_ln_mln.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
data_hint = 'draw it with `python tools/data/make_demo_scenes.py --out {root}`'

classes = ('background', 'disc', 'ring', 'square', 'triangle', 'cross')  # mmkat.datasets.SEG_CLASSES
palette = [(0, 0, 0), (220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25), (145, 30, 180)]
num_classes = len(classes)
embed_dims = 96
image_size = 256
crop_size = (image_size, image_size)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='KAT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3, mlp_ratio=4.),
        img_size=image_size,
        patch_size=16,
        out_type='featmap',
        out_indices=(0, 1, 2, 3),
        with_cls_token=True,
        final_norm=False,
        drop_path_rate=0.05,
        mlp='kan'),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=embed_dims, channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'),
)

dataset_type = 'BaseSegDataset'
data_root = 'data/kat_demo_scenes/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type=dataset_type, data_root=data_root, metainfo=dict(classes=classes, palette=palette),
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/train', seg_map_path='seg/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/val', seg_map_path='seg/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='KATLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0)}),
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=10.0),
)
max_iters = 800
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=400)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=400, max_keep_ckpts=2),
)
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
