#!/usr/bin/env bash
# The reduced-budget digits data-free table through reproduce.py (mean ± std over seeds,
# results/ files with command and provenance), with the per-method settings of
# datafree_reduced.sh's digits profile. DAFL's schedule differs (5 student steps per
# generator round, no crop), so its rows are a separate reproduce.py call on the same runs.
#   experiments/datafree_reduced_reproduce.sh TEACHERS RUNS SEEDS EPOCHS [ROWS]
# TEACHERS holds resnet20 (a configs/default.py mode=train workdir of resnet20 on digits).
# Finished runs are skipped, so calling it with SEEDS=1, 2, 3 in turn runs seed-major.
set -uo pipefail
teachers=$1; runs=$2; seeds=$3; epochs=$4
rows=${5:-DeepInv,DeepInv+KDCI,CMI,CMI+KDCI,Fast,Fast+KDCI,DAFL,DAFL+KDCI}
common=(--table datafree_digits --teachers "$teachers" --runs "$runs" --seeds "$seeds"
        --budget "$epochs"
        --override train.batch_size=64 --override train.eval_batch_size=128
        --override datafree.synthesis_batch_size=64 --override datafree.pool_capacity=4096)
others=(--override datafree.kd_steps=20 --override datafree.ep_steps=20
        --override datafree.deepinv.g_steps=40 --override datafree.cmi.g_steps=20
        --override datafree.cmi.n_neg=256 --override datafree.cmi.bank_size=2048
        --override datafree.fast.g_steps=5 --override datafree.fast.lr_g=3e-3)
dafl=(--override datafree.kd_steps=5 --override datafree.ep_steps=20
      --override data.crop_padding=0)
main_rows=$(tr , '\n' <<<"$rows" | grep -v '^DAFL' | paste -sd, -)
dafl_rows=$(tr , '\n' <<<"$rows" | grep '^DAFL' | paste -sd, -)
rc=0
[ -n "$main_rows" ] && { python experiments/reproduce.py "${common[@]}" "${others[@]}" --rows "$main_rows" || rc=1; }
[ -n "$dafl_rows" ] && { python experiments/reproduce.py "${common[@]}" "${dafl[@]}" --rows "$dafl_rows" || rc=1; }
# one report over every row that finished (the per-call reports above cover their rows only)
python experiments/reproduce.py --table datafree_digits --teachers "$teachers" --runs "$runs" \
  --seeds "$seeds" --budget "$epochs" --report_only
exit $rc
