#!/usr/bin/env bash
# GPU device check for issue 4: one probe sample (--once), `modelfleet diagnose --all-devices` and the probe
# CPU benchmark, as JSON under $OUT (default ./device-check), next to nvidia-smi's own account for comparison.
#   PYTHON=/path/to/python scripts/device_check.sh
set -u
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-device-check}
mkdir -p "$OUT"
export MODELFLEET_STATE_DIR="$OUT/state" PYTHONPATH="${PYTHONPATH:-}:$(pwd)"

nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,utilization.gpu,temperature.gpu,power.draw \
  --format=csv,noheader,nounits > "$OUT/nvidia-smi.csv" 2>&1 || echo "nvidia-smi unavailable" >> "$OUT/nvidia-smi.csv"
timeout 60 "$PY" -m services.hardware_probe --once > "$OUT/probe_sample.json" 2> "$OUT/probe.stderr"
echo "probe --once rc=$?"
timeout 120 "$PY" -m scripts.diagnose_gpu --all-devices > "$OUT/diagnose.json" 2> "$OUT/diagnose.stderr"
echo "diagnose rc=$? (1 = a device is at critical risk)"
timeout 120 "$PY" -m scripts.bench.probe_sample > "$OUT/bench_probe_sample.txt" 2>&1
echo "bench rc=$?"

"$PY" - "$OUT" <<'PY'
import csv, json, sys
out = sys.argv[1]
sample = json.load(open(f"{out}/probe_sample.json"))
diag = json.load(open(f"{out}/diagnose.json"))
smi = [r for r in csv.reader(open(f"{out}/nvidia-smi.csv")) if len(r) > 5]
print("has_gpu:", sample["has_gpu"], "| reason:", sample["no_gpu_reason"], "| driver:", sample["nvml_driver_version"])
for g, row in zip(sample["gpus"], smi or [None] * len(sample["gpus"])):
    mib = 1 << 20
    line = f"gpu{g['index']} {g['name']}: total {g['memory_total_bytes'] // mib} MiB free {g['memory_free_bytes'] // mib} MiB"
    if row:
        line += f" | nvidia-smi total {row[3].strip()} free {row[5].strip()} MiB"
    print(line, "| procs", len(g["processes"]), "| torch", g["torch_allocated_bytes"], g["torch_reserved_bytes"])
print("diagnose risk:", diag["risk"], "| torch", diag["torch"]["version"], "cuda", diag["torch"]["cuda_version"])
for d in diag["devices"]:
    print(f"  device {d['index']} {d['name']} ({d['source']}): free_ratio {d['free_ratio']} risk {d['risk']}")
print(open(f"{out}/bench_probe_sample.txt").read().strip().splitlines()[-1])
PY
