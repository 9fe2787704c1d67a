# Evaluate the released KAT-B ImageNet-1k weights (timm's kat_base_patch16_224) with mmpretrain:
#   python tools/test.py configs/kat/kat_b_in1k_released.py
# load_from names the weights (configs/kat/metafile.yml): the file is downloaded once into the torch hub cache,
# checked against the sha256 in its name and read in mmpretrain's layout. The vitft weights (started from
# ImageNet-21k ViT weights) use the same model: add kat-base-p16_3rdparty-vitft_in1k as CHECKPOINT.
# Preprocessing matches the release: bicubic resize of the short side to 256 (crop_pct 0.875), centre crop 224,
# ImageNet mean/std.
_base_ = ['./kat_b_in1k.py']

load_from = 'kat-base-p16_3rdparty_in1k'
