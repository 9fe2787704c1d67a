# KAT-B UperNet on ADE20K semantic segmentation, mmseg's ViT + UperNet recipe with KAT in place of the ViT:
# features of blocks 2/5/8/11 rescaled x4/x2/x1/x0.5 by MultiLevelNeck, UPerHead plus an auxiliary FCN head,
# 512x512 crops, AdamW lr 6e-5 wd 0.01 with layer-wise lr decay 0.9, linear warm-up then poly, 160k iterations
# at 16 images (8 GPUs x 2), sliding-window inference. The backbone starts from the released ImageNet weights:
#   python tools/train.py configs/kat/upernet_kat_b.py                      # data/ade/ADEChallengeData2016
#   bash tools/dist_train.sh configs/kat/upernet_kat_b.py 8
#   python tools/test.py configs/kat/upernet_kat_b.py work_dirs/upernet_kat_b/iter_160000.pth   # mIoU
_base_ = [
    'mmseg::_base_/models/upernet_vit-b16_ln_mln.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)

# the released ImageNet-1k weights (timm's kat_base_patch16_224) by name (configs/kat/metafile.yml): downloaded
# once into the torch hub cache and checked against the sha256 in the file name. A path, URL or hf_hub:OWNER/REPO
# works too; None starts from scratch. The classifier is dropped and the position embedding resized.
pretrained = 'kat-base-p16_3rdparty_in1k'
embed_dims = 768
crop_size = (512, 512)
num_classes = 150

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # mmseg's model-level key would be passed to the backbone; KAT reads init_cfg instead
    backbone=dict(
        _delete_=True,
        type='KAT',
        arch='base',
        img_size=512,
        patch_size=16,
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        with_cls_token=True,
        final_norm=False,
        drop_path_rate=0.1,
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=embed_dims, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=512, num_classes=num_classes),
    auxiliary_head=dict(in_channels=embed_dims, num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='KATLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0)}),
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16 images per iteration
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
