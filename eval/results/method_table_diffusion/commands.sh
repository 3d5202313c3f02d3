#!/usr/bin/env bash
# issue 16: the diffusion method table with one pretrained model per seed and real-data size
set -u
cd /work/study
export PYTHONPATH=/work/study OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=/work/studies/mtd
COMMON="--out $OUT --producer diffusion --unet-steps 1000 --objectives simclr --set train.epochs=6 --rows real-only naive hsg+hpg hsg hpg"
job=$1
if [ "$job" = A ]; then
  python eval/method_table.py $COMMON --seeds 0 > $OUT/A1.log 2>&1
  python eval/method_table.py $COMMON --seeds 2 --no-half > $OUT/A2.log 2>&1
else
  python eval/method_table.py $COMMON --seeds 1 > $OUT/B1.log 2>&1
  python eval/method_table.py $COMMON --seeds 2 --half-only > $OUT/B2.log 2>&1
fi
echo "job $job done $(date)" >> $OUT/done.log
