# A CPU-sized KAT (dims 64, 4 blocks, 2 heads) on Fashion-MNIST with the recipe of kat_t_fmnist.py, short
# enough to finish a whole schedule on a laptop-class CPU; vit_mini_fmnist.py is its GELU twin.
#   python tools/train.py configs/kat/fashion_mnist/kat_mini_fmnist.py
_base_ = ['./kat_t_fmnist.py']

max_epochs = 4
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=64, num_layers=4, num_heads=2), drop_path_rate=0.05),
             head=dict(in_channels=64))
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(logger=dict(interval=100))
