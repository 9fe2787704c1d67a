# KAT-B Mask R-CNN on COCO instance segmentation, the ViTDet recipe (mmdet projects/ViTDet) with KAT in place
# of the plain ViT: 1024 px large-scale jitter, window attention (14) with global attention at blocks 2/5/8/11,
# relative positions, a simple feature pyramid, AdamW lr 1e-4 wd 0.1 with layer-wise lr decay 0.7, AMP, 100 epochs
# (184,375 iterations at 64 images). The backbone starts from the released ImageNet weights:
# The schedule assumes 64 images per iteration, 16 GPUs x 4 (mmdet's ViTDet setting):
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=... bash tools/dist_train.sh configs/kat/mask_rcnn_kat_b.py 8   # 2 x 8 GPUs
#   bash tools/dist_train.sh configs/kat/mask_rcnn_kat_b.py 8 --cfg-options train_dataloader.batch_size=8  # 8 GPUs
# With fewer images per iteration add --auto-scale-lr (lr scaled by images / 64; the 184,375 iterations then
# cover fewer epochs). data/coco is expected; the released weights are downloaded on first use.
#   python tools/test.py configs/kat/mask_rcnn_kat_b.py work_dirs/mask_rcnn_kat_b/iter_184375.pth   # bbox + segm mAP
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::common/lsj-100e_coco-instance.py',
]
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)

# the released ImageNet-1k weights (timm's kat_base_patch16_224) by name (configs/kat/metafile.yml): downloaded
# once into the torch hub cache and checked against the sha256 in the file name. A path, URL or hf_hub:OWNER/REPO
# works too; None starts from scratch. The classifier is dropped and the position embedding resized.
pretrained = 'kat-base-p16_3rdparty_in1k'
embed_dims = 768
image_size = (1024, 1024)
norm_cfg = dict(type='KATLayerNorm2d', requires_grad=True, eps=1e-6)
batch_augments = [dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]

model = dict(
    data_preprocessor=dict(pad_size_divisor=32, batch_augments=batch_augments),
    backbone=dict(
        _delete_=True,
        type='KAT',
        arch='base',
        img_size=1024,
        patch_size=16,
        out_type='featmap',
        out_indices=-1,
        with_cls_token=False,
        final_norm=False,
        drop_path_rate=0.1,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        use_rel_pos=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='KATSimpleFPN',
        backbone_channel=embed_dims,
        out_channels=256,
        num_outs=5,
        norm='LN'),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)),
)

optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='KATLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.7,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '.pos_embed': dict(decay_mult=0.0),
            '.cls_token': dict(decay_mult=0.0),
            '.rel_pos_h': dict(decay_mult=0.0),
            '.rel_pos_w': dict(decay_mult=0.0),
        }),
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
)

# 100 epochs = 184,375 iterations x 64 images / 118k images
max_iters = 184375
interval = 5000
dynamic_intervals = [(max_iters // interval * interval + 1, max_iters)]
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=dynamic_intervals)
train_dataloader = dict(batch_size=4, num_workers=8)  # x 16 GPUs = 64 images per iteration
# ViTDet evaluates at the training size: the long side resized to 1024 and padded to 1024 x 1024
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, save_last=True, interval=interval, max_keep_ckpts=5))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
auto_scale_lr = dict(base_batch_size=64)
