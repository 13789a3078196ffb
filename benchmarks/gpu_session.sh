#!/usr/bin/env bash
# The GPU checks of issues #12 (speed) and #8 (epoch energy) as one prepared run on a lent GPU
# machine (its image has PyTorch, NumPy, PyYAML, safetensors and nvidia-ml-py, no network).
#
#   here:   make gpu-bundle          # .gpu/ (git-ignored): pydantic wheels for its Python + MNIST
#   there:  bash benchmarks/gpu_session.sh   (results under $OUT, default /tmp/gpu_out)
#   (with the device tool: run command "bash benchmarks/gpu_session.sh", carry [".gpu"])
#
# Each part has its own time limit and the run goes on when one fails; everything it prints is
# also in $OUT/session.log. SMOKE=1 shrinks every part to seconds (tests/test_gpu_session.py runs
# it so on the CPU, to keep the script working between GPU sessions). At most 9 minutes (the
# sum of the limits): run it with timeout_s 550. ONLY="part ..." runs just those parts.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
cd "$(dirname "$0")/.."
if [ -d .gpu/whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/fsnn_site .gpu/whl/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/fsnn_site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p /tmp/fsnn_pkg && ln -sfn "$PWD" /tmp/fsnn_pkg/fsnn   # import fsnn from this checkout
export PYTHONPATH=/tmp/fsnn_pkg${PYTHONPATH:+:$PYTHONPATH}
if [ -d .gpu/data/mnist ]; then
  export FSNN_DATA=${FSNN_DATA:-/tmp/fsnn_data}
  mkdir -p "$FSNN_DATA/mnist"
  for f in .gpu/data/mnist/*.gz; do gunzip -c "$f" > "$FSNN_DATA/mnist/$(basename "${f%.gz}")"; done
  cp .gpu/data/mnist/.verified "$FSNN_DATA/mnist/"
fi
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv \
  || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA:', torch.cuda.is_available() and
torch.cuda.get_device_name(0))"
# the fused step (+fu) needs Triton and a C compiler (Triton builds its launcher with it)
$PY -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "no triton"
echo "C compiler: $(command -v cc || command -v gcc || echo none)"
if [ "${SMOKE:-0}" = 1 ]; then  # later options override earlier ones
  S_GC="--models f400 --T 5 --batch 8"
  S_TP="--models f400 --T 5 --batch 16 --iters 1"
  S_SA="--model f400 --T 5 --train-limit 256 --test-limit 128 --epochs 1"
  S_EN="--model f400 --T 3 --images 64"
else
  S_GC="" S_TP="" S_SA="" S_EN=""
fi

part() {  # part SECONDS NAME COMMAND...  (ONLY="name name ...": just those parts)
  local limit=$1 name=$2; shift 2
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo; echo "=== $name ($(date +%T), limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" || echo "=== $name: exit $?"
  echo "=== $name: $((SECONDS - t0)) s"
}
B=benchmarks
# word splitting of the $S_* options is intended
# shellcheck disable=SC2086
{
part 60 graph-check $PY $B/graph_check.py --models f64c5,f64c5_nmnist,alexnet_f \
  --out "$OUT/graph_check.json" $S_GC
# one part per model (neither can starve the other); the variants most needed come first:
# the anchor-like baseline (Broyden, no graphs), the defaults on a GPU (graphs, fused step), then
# the opt-in levers and plain eager
V=eager+br,graphs+fu,graphs+bf16+fu,graphs+fu+cl,eager
part 125 throughput-f64c5 $PY $B/throughput.py --models f64c5 --T 30 --iters 20 \
  --variants $V --out "$OUT/throughput_f64c5.json" $S_TP
part 110 throughput-alexnet $PY $B/throughput.py --models alexnet_f --T 30 --iters 20 \
  --variants $V --out "$OUT/throughput_alexnet.json" $S_TP
part 45 throughput-t100 $PY $B/throughput.py --models alexnet_f --T 100 --iters 10 \
  --variants eager+br,graphs+fu --out "$OUT/throughput_t100.json" $S_TP
part 50 throughput-if $PY $B/throughput.py --models alexnet_f --T 30 --neuron IF --iters 10 \
  --variants eager+br,graphs+fu --out "$OUT/throughput_if.json" $S_TP
part 80 speed-accuracy $PY $B/speed_accuracy.py --variants eager+br,graphs+fu,graphs+bf16+fu \
  --seeds 2 --epochs 2 --train-limit 20000 --out "$OUT/speed_accuracy.json" $S_SA
part 70 energy $PY $B/energy_check.py --out "$OUT/energy_check.json" $S_EN
}
echo "done $(date +%T)"
