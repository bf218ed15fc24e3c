#!/usr/bin/env bash
# The GPU record (benchmarks/gpu_record.py), or one part of it, on the device machine, whose image
# has PyTorch, timm and torchvision but not pydantic or pycocotools: those install from the wheels
# carried in .gpu-wheels/ (make gpu-wheels) into a folder outside the working tree.
#
#   bash benchmarks/gpu_record.sh all|bench|train|compile|data [--smoke] [--deadline SECONDS]
#
# The device tool brings back at most 8 files from $OUT, so the record is written to a work
# folder and comes back as three: environment.txt, tables.md and gpu-record.tar.gz (every
# command's JSON and log; the training run's checkpoints stay behind).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-record}
work=${TMPDIR:-/tmp}/mlcl-gpu-record
site=${TMPDIR:-/tmp}/mlcl-gpu-site
if [ -d .gpu-wheels ] && ! python3 -c "import pydantic, pycocotools" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --find-links .gpu-wheels --target "$site" \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions pycocotools
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export MLCL_DATA_DIR=${MLCL_DATA_DIR:-${TMPDIR:-/tmp}/mlcl-data}  # generated images stay out of $OUT
rm -rf "$work" && mkdir -p "$work" "$OUT"
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
  git rev-parse HEAD 2>/dev/null || true
} > "$work/environment.txt" 2>&1
cat "$work/environment.txt"
status=0
python3 benchmarks/gpu_record.py "$@" --out "$work" | tee "$work/tables.md" || status=$?
tar -czf "$OUT/gpu-record.tar.gz" -C "$work" --exclude '*-run' .
cp "$work/environment.txt" "$work/tables.md" "$OUT/"
exit "$status"
