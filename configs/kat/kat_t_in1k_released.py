# Evaluate the released KAT-T ImageNet-1k weights (timm's kat_tiny_patch16_224) with mmpretrain.
# Released files are timm state dicts; convert once to an mmpretrain checkpoint, then test:
#   python tools/convert_checkpoint.py kat_tiny_patch16_224.pth checkpoints/kat_t_in1k_released.pth --task cls
#   python tools/test.py configs/kat/kat_t_in1k_released.py checkpoints/kat_t_in1k_released.pth
# Preprocessing matches the release: bicubic resize of the short side to 256 (crop_pct 0.875), centre crop 224,
# ImageNet mean/std.
_base_ = ['./kat_t_in1k.py']

load_from = 'checkpoints/kat_t_in1k_released.pth'
