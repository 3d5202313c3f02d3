#!/bin/bash
# head-room: data.subset=10000 train.epochs=10 (chosen on val among 5000x20, 10000x10, 20000x5 real-only runs):
# real-only, naive, hsg+hpg, one process per seed, one thread each (three at once on the 2-core machine)
cd /work/study16
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
H=/work/studies/headroom/main
M="--producer diffusion --unet-steps 1000 --objectives simclr --no-half"
for s in 0 1 2; do
  python eval/method_table.py --out $H $M --seeds $s --rows real-only naive hsg+hpg --set data.subset=10000 train.epochs=10 > /work/studies/headroom-s$s.log 2>&1 &
done
wait
python eval/method_table.py --out $H $M --seeds 0 1 2 --rows real-only naive hsg+hpg --set data.subset=10000 train.epochs=10 --summarise-only > /work/studies/headroom-summary.log 2>&1
echo DONE >> /work/studies/headroom-summary.log
