#!/usr/bin/env bash
# Issue 11's open GPU figures in one device call (15 minutes of device time a session, start-up included):
#   1. SD 1.5 under a 6 GB cap, the defaults (target: peak <= 4.5 GB; 5.49 on 2026-12-04, before the preservation
#      pass moved first);
#   2. SD 1.5 bf16 speed against the official-style step (same process, same card);
#   3. Flux.1 [dev] NF4 at 1024 px, bf16 with checkpointing (target <= 16 GB; 17.22 on 2026-12-04).
# Each part has its own time limit, so a slow part cannot starve the next; tables go to $OUT/gpu_tables.md, logs to
# $OUT/*.log. Wheels the device lacks (diffusers, bitsandbytes) travel in .whl (the device tool's README says how):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560)
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# the repository root is the package (setuptools maps it to duo_unlearn): import it by that name without installing
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/duo_unlearn
export PYTHONPATH=/tmp/site:/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > "$OUT/device.txt" 2>&1

part() {  # name, seconds, gpu_memory.py arguments...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/gpu_memory.py --out "$OUT/gpu_tables.md" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: rc $? ($(date -u +%T))" | tee -a "$OUT/device.txt"
}
part sd1_6gb 90 --families sd1 --card-gb 6 --only "6 GB card" --steps 4 --warmup 2
part sd1_bf16 120 --families sd1 --only "official bf16,project bf16 ckpt on" --steps 4 --warmup 2
part flux 300 --families flux --only "bf16 ckpt on" --steps 2 --warmup 1
cat "$OUT/device.txt"
