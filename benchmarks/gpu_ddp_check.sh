#!/usr/bin/env bash
# The DDP checks that need a GPU (CI has none), as one short script for a lent GPU machine:
#
#   bash benchmarks/gpu_ddp_check.sh OUTDIR        (about 5 minutes on one H100/H200)
#
# 1. the DDP path's overhead on one GPU: bench_ddp.py overhead (the bare model against the same
#    model in DistributedDataParallel with NCCL, a group of one), ResNet18, CvT, PiT, batch 256;
# 2. `deeplense train --nproc-per-node auto` on CUDA: one process per visible GPU (NCCL), or on
#    one GPU the plain path; the run's config records the layout;
# 3. with 2 or more GPUs: scaling 1 -> N processes (bench_ddp.py scaling), and --sync-bn.
# Everything it prints lands in OUTDIR/*.md and OUTDIR/*.log; it exits 1 if a step failed.
set -uo pipefail
OUT="${1:?usage: gpu_ddp_check.sh OUTDIR}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export DEEPLENSE_HOME="$OUT/home"
status=0
step() { local name="$1"; shift; echo "== $name: $*" | tee -a "$OUT/steps.log"
         local t0; t0=$(date +%s)
         if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/steps.log"
         else echo "   FAILED (see $name.log)" | tee -a "$OUT/steps.log"; status=1; fi; }

"$PY" -c 'import torch; print(torch.__version__, torch.cuda.device_count(), torch.cuda.get_device_name(0))' \
    | tee "$OUT/machine.log"
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')

step overhead "$PY" benchmarks/bench_ddp.py overhead --device cuda --models resnet18,cvt,pit \
    --batch 256 --steps 30
cp "$OUT/overhead.log" "$OUT/overhead.md"

"$PY" -c "from deeplense_cli.simulate import simulate_dataset as s; \
s('Model_III', '$OUT/data', train_per_class=3000, test_per_class=500, seed=11)"
step train_auto "$PY" -m deeplense_cli train -m resnet18 --dataset Model_III \
    --data-root "$OUT/data" --epochs 2 --nproc-per-node auto --output jsonl --run-dir "$OUT/run-auto"
grep -A6 '^distributed:' "$OUT/run-auto/config.yaml" >> "$OUT/train_auto.log" || true

if [ "$NGPU" -ge 2 ]; then
    step scaling "$PY" benchmarks/bench_ddp.py scaling --procs "1,2,$NGPU" --models resnet18,cvt \
        --per-class 3000 --batch 256 --epochs 3 --work "$OUT/scaling"
    cp "$OUT/scaling.log" "$OUT/scaling.md"
    step sync_bn "$PY" -m deeplense_cli train -m resnet18 --dataset Model_III \
        --data-root "$OUT/data" --epochs 2 --nproc-per-node 2 --sync-bn --output jsonl \
        --run-dir "$OUT/run-syncbn"
fi
exit $status
