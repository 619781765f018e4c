#!/usr/bin/env bash
# The prepared accelerator check: one script, well inside 6 minutes on a CUDA machine.
#
#   bash bench/device_check.sh            # on the accelerator machine (the `device` tool's run)
#   bash bench/device_check.sh --dry-run  # here, on the CPU: the same steps at toy sizes
#
# 1. JAX with CUDA: the image's own jax/jaxlib when it sees a GPU, else wheels carried in .whl/
#    (see bench/README or the device notes) installed into /tmp/site.
# 2. The tests that mean something on a GPU: numerics against the references, the engine, batches.
# 3. `python -m bench e2e` at 512 and 1024 px against PyTorch on the same GPU (cold and warm),
#    and 500 L-BFGS iterations at 512 px in float32 and bfloat16.
# 4. `python -m bench largest`: the largest square image one device runs with --remat tiles
#    (8192, 12288, 16384 px in turn, Adam), its step time and the allocator's peak.
# Everything lands in $OUT (the device tool brings it back) or bench/results/device/: e2e.json,
# e2e-device.md (the generated section to paste between BENCHMARKS.md's "Accelerator" markers),
# the logs, versions and nvidia-smi.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
out="${OUT:-bench/results/device}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
started=$(date +%s)
log() { echo "[device_check $(( $(date +%s) - started ))s] $*" | tee -a "$out/device_check.log"; }

if (( dry )); then
  export JAX_PLATFORMS=cpu
  sizes="64:20" tests=(tests/test_lbfgs.py) test_timeout=300 e2e_timeout=300
  largest_sizes="32,48" largest_timeout=120
else
  # 512:500 is the goal's run (500 L-BFGS iterations at 512 px), in float32 and bfloat16.
  # 60 + 230 + 60 s of time limits: the whole check stays under 6 minutes.
  sizes="512:500,1024:200" test_timeout=60 e2e_timeout=230
  largest_sizes="8192,12288,16384" largest_timeout=60
  tests=(tests/test_lbfgs.py tests/test_vgg_numerics.py tests/test_losses.py tests/test_batch.py)
  if ! $python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
      log "installing the carried wheels into /tmp/site"
      $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
  fi
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
$python - <<'EOF' 2>&1 | tee "$out/versions.txt"
import jax, flax, optax, sys
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("backend", jax.default_backend(), "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
    print("torch missing: the PyTorch side of the comparison is skipped")
EOF

log "tests"
timeout "$test_timeout" $python -m pytest -q -x -p no:cacheprovider "${tests[@]}" > "$out/tests.log" 2>&1
log "tests: exit $? ($(tail -1 "$out/tests.log"))"

log "end to end: $sizes"
timeout "$e2e_timeout" $python -m bench e2e --sizes "$sizes" --adam-sizes none --no-batch \
  --extra-dtypes bfloat16 --out "$out" --markdown "$out/e2e-device.md" > "$out/e2e.log" 2>&1
log "end to end: exit $?"
log "largest image on one device: $largest_sizes"
timeout "$largest_timeout" $python -m bench largest --sizes "$largest_sizes" --steps 2 --out "$out" \
  > "$out/largest.md" 2> "$out/largest.log"
log "largest: exit $?"
log "done in $(( $(date +%s) - started )) s; files in $out"
ls -la "$out" >> "$out/device_check.log"
