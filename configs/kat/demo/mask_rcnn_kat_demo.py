# Mask R-CNN with a small KAT on the demo scenes that mmkat draws itself (5 shape classes with masks, COCO
# format, no download): trains and evaluates bbox + segm mAP (CocoMetric) on CPU in minutes. The detector is
# the ViTDet-style one of mask_rcnn_kat_b.py, scaled down: window attention with global blocks, relative
# positions, KATSimpleFPN, layer-wise lr decay.
#   python tools/data/make_demo_scenes.py                     # once: data/kat_demo_scenes (about 10 s)
#   python tools/train.py configs/kat/demo/mask_rcnn_kat_demo.py
# The GELU-MLP twin (a plain ViT of the same size): --cfg-options model.backbone.mlp=gelu
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)
data_hint = 'draw it with `python tools/data/make_demo_scenes.py --out {root}`'

classes = ('disc', 'ring', 'square', 'triangle', 'cross')  # mmkat.datasets.SCENE_CLASSES
num_classes = len(classes)
embed_dims = 96
channels = 64
image_size = 256
norm_cfg = dict(type='KATLayerNorm2d', requires_grad=True, eps=1e-6)

model = dict(
    data_preprocessor=dict(bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='KAT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=3, mlp_ratio=4.),
        img_size=image_size,
        patch_size=16,
        out_type='featmap',
        out_indices=-1,
        with_cls_token=False,
        final_norm=False,
        drop_path_rate=0.05,
        window_size=8,
        global_attn_indexes=[1, 3],
        use_rel_pos=True,
        mlp='kan'),
    neck=dict(
        _delete_=True,
        type='KATSimpleFPN',
        backbone_channel=embed_dims,
        out_channels=channels,
        num_outs=5,
        # no LayerNorm in the neck here: trained from scratch on 400 images, the LN pyramid kept the RoI head at
        # the class prior for hundreds of iterations (ResNet-18 stride 16 + this neck: loss_cls 0.96 with LN,
        # 0.60 without, after 100 iterations); ViTDet's LN neck is for pretrained backbones (mask_rcnn_kat_*.py)
        norm=None),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', in_channels=channels, conv_out_channels=channels,
                       fc_out_channels=256, norm_cfg=norm_cfg, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, norm_cfg=norm_cfg,
                       num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(max_per_img=20)),
)

dataset_type = 'CocoDataset'
data_root = 'data/kat_demo_scenes/'
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25),
                                          (145, 30, 180)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='images/train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=4), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='images/val/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'], format_only=False)
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='KATLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.pos_embed': dict(decay_mult=0.0), '.rel_pos_h': dict(decay_mult=0.0),
                                    '.rel_pos_w': dict(decay_mult=0.0)}),
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=10.0),
)
max_epochs = 4
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=2, max_keep_ckpts=2),
)
randomness = dict(seed=0)
