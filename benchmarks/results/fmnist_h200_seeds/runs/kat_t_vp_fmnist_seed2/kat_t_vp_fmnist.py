custom_imports = dict(
    allow_failed_imports=False, imports=[
        'mmkat',
    ])
data_preprocessor = dict(
    crop_padding=4,
    flip_prob=0.5,
    mean=[
        72.94,
    ],
    num_classes=10,
    std=[
        90.02,
    ],
    type='KATBatchClsPreprocessor')
data_root = 'data/fashion_mnist'
default_hooks = dict(
    checkpoint=dict(
        _scope_='mmpretrain',
        interval=10,
        max_keep_ckpts=1,
        save_best='auto',
        type='KATCheckpointHook'),
    logger=dict(_scope_='mmpretrain', interval=50, type='LoggerHook'),
    param_scheduler=dict(_scope_='mmpretrain', type='ParamSchedulerHook'),
    sampler_seed=dict(_scope_='mmpretrain', type='DistSamplerSeedHook'),
    timer=dict(_scope_='mmpretrain', type='IterTimerHook'),
    visualization=dict(
        _scope_='mmpretrain', enable=False, type='VisualizationHook'))
default_scope = 'mmpretrain'
env_cfg = dict(
    cudnn_benchmark=False,
    dist_cfg=dict(backend='nccl'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
launcher = 'none'
load_from = None
log_level = 'INFO'
max_epochs = 15
model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        img_size=28,
        in_channels=1,
        init_mode='variance_preserving',
        mlp='kan',
        out_type='cls_token',
        patch_size=4,
        type='KAT'),
    head=dict(
        in_channels=192,
        init_cfg=dict(bias=0.0, layer='Linear', std=0.02, type='TruncNormal'),
        loss=dict(
            label_smooth_val=0.1, mode='original', type='LabelSmoothLoss'),
        num_classes=10,
        type='LinearClsHead'),
    neck=None,
    type='ImageClassifier')
optim_wrapper = dict(
    clip_grad=dict(max_norm=5.0),
    dtype='bfloat16',
    loss_scale='dynamic',
    optimizer=dict(
        betas=(
            0.9,
            0.999,
        ), lr=0.002, type='AdamW', weight_decay=0.05),
    paramwise_cfg=dict(
        bias_decay_mult=0.0,
        custom_keys=dict({
            '.cls_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0)
        }),
        flat_decay_mult=0.0,
        norm_decay_mult=0.0),
    type='AmpOptimWrapper')
param_scheduler = [
    dict(
        begin=0,
        by_epoch=True,
        convert_to_iter_based=True,
        end=3,
        start_factor=0.001,
        type='LinearLR'),
    dict(
        begin=3,
        by_epoch=True,
        convert_to_iter_based=True,
        end=15,
        eta_min=1e-05,
        type='CosineAnnealingLR'),
]
randomness = dict(deterministic=False, seed=2)
resume = False
test_cfg = dict()
test_dataloader = dict(
    batch_size=500,
    collate_fn=dict(type='kat_batch_collate'),
    dataset=dict(
        data_root='data/fashion_mnist',
        pipeline=[
            dict(color_type='grayscale', type='KATLoadImageFromFile'),
            dict(scale=(
                28,
                28,
            ), type='Resize'),
            dict(type='PackInputs'),
        ],
        split='test',
        type='KATFashionMNIST'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
test_evaluator = dict(topk=(1, ), type='Accuracy')
test_pipeline = [
    dict(color_type='grayscale', type='KATLoadImageFromFile'),
    dict(scale=(
        28,
        28,
    ), type='Resize'),
    dict(type='PackInputs'),
]
train_cfg = dict(by_epoch=True, max_epochs=15, val_interval=1)
train_dataloader = dict(
    batch_size=1024,
    collate_fn=dict(type='kat_batch_collate'),
    dataset=dict(
        data_root='data/fashion_mnist', split='train', type='KATFashionMNIST'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(shuffle=True, type='DefaultSampler'))
val_cfg = dict()
val_dataloader = dict(
    batch_size=500,
    collate_fn=dict(type='kat_batch_collate'),
    dataset=dict(
        data_root='data/fashion_mnist',
        pipeline=[
            dict(color_type='grayscale', type='KATLoadImageFromFile'),
            dict(scale=(
                28,
                28,
            ), type='Resize'),
            dict(type='PackInputs'),
        ],
        split='test',
        type='KATFashionMNIST'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
val_evaluator = dict(topk=(1, ), type='Accuracy')
vis_backends = [
    dict(_scope_='mmpretrain', type='LocalVisBackend'),
]
visualizer = dict(
    _scope_='mmpretrain',
    type='UniversalVisualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
    ])
work_dir = '/tmp/fmnist_runs_1796155209/kat_t_vp_fmnist_seed2'
