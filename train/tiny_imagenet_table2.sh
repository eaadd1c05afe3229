#!/usr/bin/env bash
# Paper Table 2 on a GPU: trains the clean and six attacked ResNet-34s on Tiny ImageNet
# (train/configs/tiny_imagenet.py, 200 epochs each), then compares every detector on them
# with the paper's evaluation sets (protocol paper_tiny_imagenet: 20 defender images per
# class, since the labelled test split has 50). Runs resume from their last checkpoint.
#
#   SCALEUP_JAX_TINY_IMAGENET=/data/tiny-imagenet-200.zip bash train/tiny_imagenet_table2.sh zoo/tiny_imagenet
#
# Without $SCALEUP_JAX_TINY_IMAGENET the archive is downloaded from cs231n.stanford.edu.
set -euo pipefail
out="${1:-zoo/tiny_imagenet}"
results="${2:-docs/results/tiny_imagenet}"
attacks=(badnets label_consistent physical tuap wanet issba)
# The clean model first: TUAP and Label-Consistent craft their triggers on it.
for a in clean "${attacks[@]}"; do
  python -m train.main --config "train/configs/tiny_imagenet.py:$a" \
      --workdir "$out/${a}_resnet34" --config.progress=False \
      $( [[ $a == tuap || $a == label_consistent ]] && echo "--config.attack_kwargs.clean_ckpt=$out/clean_resnet34" )
done
ckpts=$(printf "$out/%s_resnet34," "${attacks[@]}")
python -m eval.compare --ckpts "${ckpts%,}" --protocol paper_tiny_imagenet --num_images 0 \
    --out "$results"
