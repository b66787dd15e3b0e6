#!/usr/bin/env bash
# The GPU check of bf16 (for a machine with one NVIDIA GPU, run from the repository root
# with the project installed): the default run on the real model in bf16, packing
# self-check on, then its step time, throughput, memory and MFU from metrics.jsonl.
#   bash benchmarks/gpu_bf16.sh [output dir]
# Not yet run: no GPU was lent to the session that wrote it.
set -euo pipefail
out=${1:-/tmp/gpu-bf16}
python launch/train.py trainer.precision=bf16 cluster.num_workers=1 cluster.use_gpu=true \
  trainer.log_every=1 logger=none "run.output_dir=$out" 2>&1 | tee "$out.log" | grep -E "precision|self-check|attention"
python - "$out" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
steps = [m for m in lines if "step_time_s" in m][1:]  # the first step warms up
for key in ("step_time_s", "tokens_per_s", "mfu", "peak_memory_gb"):
    values = [m[key] for m in steps if key in m]
    print(f"{key}: median {statistics.median(values):.4g}" if values else f"{key}: not logged")
PY
