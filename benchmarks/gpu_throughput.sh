#!/usr/bin/env bash
# GPU throughput, one prepared run (≈ 3-5 min on one H100/H200): images/s of the bare forward and of the
# embedding stage for cnn and resnet50 (random weights: same compute as ImageNet ones, no download) in fp32
# and bf16 at batch 256, then the whole audit on a bench-dev scenario. Results: benchmarks/results/
# throughput-gpu-*.json and a summary table on stdout (paste it into benchmarks/README.md).
#
#   benchmarks/gpu_throughput.sh [SCENARIO_DIR]      default: ../shared/bench-dev/dev-strong or shared/bench-dev/dev-strong
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SC=${1:-}
if [ -z "$SC" ]; then
  for c in ../shared/bench-dev/dev-strong shared/bench-dev/dev-strong; do [ -d "$c/generated" ] && SC=$c && break; done
fi
[ -n "$SC" ] || { echo "gpu_throughput.sh: pass the scenario folder (with generated/, test/, train/)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for model in cnn resnet50; do
  for prec in fp32 bf16; do
    $PY benchmarks/throughput.py --scenario "$SC" --model "$model" --weights random --precision "$prec" \
      --device cuda --batch-size 256 --images 8192 --repeats 3 --parts forward,stage \
      --label "gpu-$model-$prec" --readme ''
  done
done
$PY benchmarks/throughput.py --scenario "$SC" --model cnn --device cuda --parts audit,ssim \
  --label gpu-audit --readme ''
$PY - <<'PYEOF'
import json, pathlib
r = pathlib.Path("benchmarks/results")
print("| device | model | precision | batch | bare forward img/s | embedding stage img/s | stage ÷ forward |")
print("|---|---|---|---:|---:|---:|---:|")
for m in ("cnn", "resnet50"):
    for p in ("fp32", "bf16"):
        d = json.loads((r / f"throughput-gpu-{m}-{p}.json").read_text())
        e = d["embedding"]
        print(f"| {d['machine']['gpu']} | {m} | {p} | {e['batch_size']} | {e['forward_img_s']:.0f} | "
              f"{e['stage_img_s']:.0f} | {e['stage_vs_forward']:.2f} |")
a = json.loads((r / "throughput-gpu-audit.json").read_text())
au = a["audit"]
print(f"\naudit {au['scenario']} on {a['machine']['gpu']}: {au['cold_s']:.1f} s cold (timings {au['timings']}), "
      f"{au['warm_s']:.2f} s re-run; SSIM {a['ssim']['speedup']:.1f}x skimage")
PYEOF
