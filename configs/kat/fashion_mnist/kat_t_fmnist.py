# KAT-T (dims 192, 12 blocks, 3 heads, as released) on Fashion-MNIST, the real data Debian ships
# (`apt-get install dataset-fashion-mnist`, then `python tools/data/fashion_mnist.py`): 28x28 grey images,
# 4x4 patches (7x7 tokens + cls). vit_t_fmnist.py trains the same-size GELU ViT with the identical recipe;
# kat_t_vp_fmnist.py the same KAT-T with the paper's variance-preserving init.
#   python tools/train.py configs/kat/fashion_mnist/kat_t_fmnist.py --amp
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmkat'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='KAT',
        arch='tiny',
        img_size=28,
        patch_size=4,
        in_channels=1,
        out_type='cls_token',
        drop_path_rate=0.1,
        mlp='kan'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)),
)
# The data stay on the GPU as one uint8 tensor (KATFashionMNIST, served a batch at a time) and are augmented
# there per batch (KATBatchClsPreprocessor: flip, 4-pixel padded random crop, then normalisation with the
# Fashion-MNIST pixel mean / std x 255). No per-sample CPU pipeline, hence num_workers=0.
data_preprocessor = dict(type='KATBatchClsPreprocessor', num_classes=10, mean=[72.94], std=[90.02],
                         flip_prob=0.5, crop_padding=4)
# test_pipeline only serves mmpretrain's ImageClassificationInferencer (tools/infer.py on image files)
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='Resize', scale=(28, 28)),
    dict(type='PackInputs'),
]
data_root = 'data/fashion_mnist'
train_dataloader = dict(
    batch_size=1024,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type='KATFashionMNIST', data_root=data_root, split='train'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='kat_batch_collate'),
)
val_dataloader = dict(
    batch_size=500,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type='KATFashionMNIST', data_root=data_root, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='kat_batch_collate'),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_epochs = 15
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'.cls_token': dict(decay_mult=0.0), '.pos_embed': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=3, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=3, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1, save_best='auto'),
)
randomness = dict(seed=0, deterministic=False)
