#!/bin/bash
# issue 12 item 5: a from-scratch diffusion HSG run of the same total budget as pretrain (1000 UNet steps) + the
# method table's hsg row (6 epochs, no stage 1): the same config, its own stage 1 of 1000 UNet steps
cd /work/study16
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=/work/studies/method_table-diffusion/runs/hsg-simclr-all-s0
S=/work/studies/scratch
/usr/bin/time -v python -m synthkit.cli train $R/config.yaml --out $S/run --no-progress --generator.pretrained=null --generator.train_steps=1000 > $S/train.log 2>&1
python -m synthkit.cli eval --run $S/run --json > $S/eval-scratch.json 2>>$S/train.log
python -m synthkit.cli eval --run $R --json > $S/eval-pretrained.json 2>>$S/train.log
echo DONE >> $S/train.log
