#!/usr/bin/env bash
# Paper Table 2 on a GPU: trains the clean and six attacked ResNet-34s on Tiny ImageNet
# (train/configs/tiny_imagenet.py, 200 epochs each), then compares every detector on them
# with the paper's evaluation protocol. Runs resume from their last checkpoint.
#
#   SCALEUP_JAX_TINY_IMAGENET=/data/tiny-imagenet-200.zip bash train/tiny_imagenet_table2.sh zoo/tiny_imagenet
#
# Without $SCALEUP_JAX_TINY_IMAGENET the archive is downloaded from cs231n.stanford.edu.
set -euo pipefail
out="${1:-zoo/tiny_imagenet}"
results="${2:-docs/results/tiny_imagenet}"
attacks=(badnets label_consistent physical tuap wanet issba)
for a in clean "${attacks[@]}"; do
  python -m train.main --config "train/configs/tiny_imagenet.py:$a" \
      --workdir "$out/${a}_resnet34" --config.progress=False
done
ckpts=$(printf "$out/%s_resnet34," "${attacks[@]}")
python -m eval.compare --ckpts "${ckpts%,}" \
    --detectors scaleup,strip,shrinkpad,deepsweep,frequency,ibd_psc \
    --protocol paper --num_images 1000 --out "$results"
