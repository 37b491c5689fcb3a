#!/usr/bin/env bash
# Reduced-budget data-free runs that fit a 2-core CPU (minutes per run), each method with
# and without KDCI. Not comparable with the published numbers: they show the pipeline.
#   experiments/datafree_reduced.sh PROFILE TEACHER OUT [SEEDS] [METHODS] [VARIANTS]
#   PROFILE digits:   kdjax-trained resnet20 teacher (digits) -> resnet8, 8 epochs
#   PROFILE cifar100: converted resnet56 teacher -> resnet20, 4 epochs, real CIFAR-100 test
#                     split (CIFAR_DIR = the unpacked cifar-100-python folder)
#   experiments/datafree_reduced.sh digits runs/digits_teacher runs/df_digits "0 1 2" "fast" "base kdci"
set -euo pipefail
profile=$1; teacher=$2; out=$3; seeds=${4:-0}; methods=${5:-"dafl deepinv cmi fast"}
variants=${6:-"base kdci"}
case $profile in
  digits)
    common=(--config.model.name=resnet8 --config.data.name=digits --config.train.epochs=8
            --config.data.crop_padding=2 --config.data.flip=False)
    steps=20 ;;
  cifar100)
    common=(--config.model.name=resnet20 --config.data.name=cifar100
            --config.data.source=archive --config.data.path="${CIFAR_DIR:?set CIFAR_DIR}"
            --config.train.epochs=4)
    steps=30 ;;
  *) echo "unknown profile $profile (digits | cifar100)" >&2; exit 2 ;;
esac
common+=(--config.teacher.checkpoint="$teacher" --config.teacher.model=
         --config.train.batch_size=64 --config.train.eval_batch_size=128
         --config.datafree.synthesis_batch_size=64 --config.datafree.kd_steps=$steps
         --config.datafree.ep_steps=$steps --config.datafree.pool_capacity=4096
         --config.train.progress=False)
declare -A extra=(
  [dafl]="--config.datafree.kd_steps=5 --config.datafree.ep_steps=$((steps / 5 * 5)) --config.data.crop_padding=0 --config.data.flip=False"
  [deepinv]="--config.datafree.deepinv.g_steps=40"
  [cmi]="--config.datafree.cmi.g_steps=20 --config.datafree.cmi.n_neg=256 --config.datafree.cmi.bank_size=2048"
  [fast]="--config.datafree.fast.g_steps=5 --config.datafree.fast.lr_g=3e-3 --config.datafree.warmup=1"
)
for seed in $seeds; do
  for m in $methods; do
    for v in $variants; do
      suffix=$([ "$v" = kdci ] && echo +kdci || true)
      [ -f "$out/$m$suffix/seed$seed/model/kdjax_model.json" ] && continue   # finished
      python -m kdjax.main --config "configs/datafree/$m.py:cifar10-wrn_40_2-wrn_16_1$suffix" \
        --workdir "$out/$m$suffix/seed$seed" --config.seed="$seed" "${common[@]}" ${extra[$m]}
    done
  done
done
