#!/usr/bin/env bash
# Tables 1-2 of the paper: the four weightings on the six datasets, 500K iterations at a total
# batch of 8 (configs/*.toml). Each line below is one training run; it resumes itself
# (--resume_checkpoint auto), so the script can be re-run after any interruption.
#
#   scripts/train_grid.sh                  # 8 processes under mpiexec, data in data/, runs in runs/
#   NPROC=1 scripts/train_grid.sh          # one GPU: --batch_size 8
#   LAUNCHER=torchrun NPROC=4 scripts/train_grid.sh data runs
#   DRY_RUN=1 scripts/train_grid.sh        # print the commands only
set -euo pipefail

DATA_ROOT=${1:-data}
RUN_ROOT=${2:-runs}
NPROC=${NPROC:-8}
LAUNCHER=${LAUNCHER:-mpiexec}
PYTHON=${PYTHON:-python}
TOTAL_BATCH=8

if (( TOTAL_BATCH % NPROC != 0 )); then
  echo "train_grid.sh: NPROC=$NPROC must divide the paper's total batch $TOTAL_BATCH" >&2
  exit 1
fi
BATCH_PER_RANK=$(( TOTAL_BATCH / NPROC ))

case "$LAUNCHER" in
  mpiexec) LAUNCH=(mpiexec -n "$NPROC" "$PYTHON") ;;
  torchrun) LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC") ;;
  *) echo "train_grid.sh: LAUNCHER must be mpiexec or torchrun, got $LAUNCHER" >&2; exit 1 ;;
esac

# dataset name -> prepared folder (datasets/README.md)
declare -A DATA_DIRS=(
  [ffhq]=ffhq256 [celebahq]=celebahq256 [afhq_dog]=afhq_dog256
  [metfaces]=metfaces256 [cifar10]=cifar10 [imagenet]=imagenet256
)

for dataset in ffhq celebahq afhq_dog metfaces cifar10 imagenet; do
  for weighting in constant p2 min_snr debias; do
    cmd=("${LAUNCH[@]}" scripts/image_train.py --config "configs/$dataset.toml"
         --weight_schedule "$weighting" --data_dir "$DATA_ROOT/${DATA_DIRS[$dataset]}"
         --log_dir "$RUN_ROOT/$dataset/$weighting" --batch_size "$BATCH_PER_RANK"
         --resume_checkpoint auto)
    echo "${cmd[*]}"
    if [[ -z "${DRY_RUN:-}" ]]; then
      "${cmd[@]}"
    fi
  done
done
