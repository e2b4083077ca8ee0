#!/usr/bin/env bash
# The GPU check: what one person with one GPU runs to see what precision and memory format do there, in
# under 8 minutes (about 3 on an H100-class GPU). Prints ratios; nothing is downloaded (synthetic CIFAR-shaped
# batches for the step timings, the embedded digits data for the search).
#
#   bash benchmarks/gpu_check.sh            # after `bash scripts/setup.sh` on a machine with CUDA
#   PYTHON=python bash benchmarks/gpu_check.sh
#
# 1. one search step (arch + weights, first order) at the default size, fp32 vs bf16, channels-last,
#    darts and sharp_darts, scalar and Max-W: seconds, images/s, peak GPU memory, bf16 / fp32 ratios;
# 2. a retrain step of DARTS_V2 at CIFAR size (C=36, 20 cells, batch 96, aux head, drop path): images/s and
#    peak GPU memory of fp32 NCHW, fp32 channels-last and bf16 channels-last;
# 3. a one-epoch quickstart-sized search (digits_search, sharp_darts) on the GPU in bf16, end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
export RAY_USAGE_STATS_ENABLED=0

"$PY" -c "import torch, sys; d = '$DEVICE'; sys.exit(0 if d == 'cpu' or torch.cuda.is_available() else 'gpu_check: no CUDA device (torch.cuda.is_available() is False)')"
[ "$DEVICE" = cpu ] || "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'device: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}')"

echo "== 1. search step: fp32 vs bf16 =="
"$PY" benchmarks/search_step.py --device "$DEVICE" --spaces darts sharp_darts --weightings scalar max_w \
    --precisions fp32 bf16 --repeats "${REPEATS:-5}" ${SEARCH_ARGS:-}

echo "== 2. retrain step of DARTS_V2 at CIFAR size =="
"$PY" benchmarks/retrain_step.py --device "$DEVICE" --variants fp32:contiguous fp32:channels_last bf16:channels_last \
    ${RETRAIN_ARGS:-}

echo "== 3. one-epoch search on digits, bf16 =="
workdir=$(mktemp -d)
start=$(date +%s)
"$PY" -m nas_service.cli train digits_search --workdir "$workdir" --device "$DEVICE" \
    --set epochs=1 --set schedule.warmup_epochs=0 --set precision=bf16 ${TRAIN_ARGS:-} > "$workdir/train.log"
grep '^\[cell_search\] epoch' "$workdir/train.log" || true
echo "one-epoch search: $(( $(date +%s) - start )) s wall (data, model, one epoch, checkpoint)"
rm -rf "$workdir"
