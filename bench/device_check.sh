#!/usr/bin/env bash
# The prepared accelerator check: one script, inside 6 minutes on a CUDA machine (an H200 here).
#
#   bash bench/device_check.sh            # on the accelerator machine (the `device` tool's run)
#   bash bench/device_check.sh --dry-run  # here, on the CPU: the same steps at toy sizes
#
# In order, each step's time limit cut to what is left of DEVICE_CHECK_BUDGET (360 s), each
# step writing what it finished as it goes:
# 1. JAX with CUDA: the image's own jax/jaxlib when it sees a GPU, else wheels carried in .whl/
#    installed into /tmp/site.
# 2. `python -m bench e2e` per size (512:500 with bfloat16 too, then 1024:200) against PyTorch
#    on the same GPU, cold and warm: the goal's 500 L-BFGS iterations at 512 px.
# 3. Diagnosis: `python -m bench lbfgs` (one L-BFGS update in each form); cold runs under the
#    XLA flags in DEVICE_CHECK_COMPILE_FLAGS (none by default); `python -m bench` at
#    DEVICE_CHECK_STEP_SIZES px (the step alone against PyTorch's; none by default).
# 4. The tests that mean something on a GPU: the optimizer, the losses, numerics, batches.
# 5. `python -m bench largest`: the largest square image one device runs with --remat tiles
#    (8192, 12288, 16384 px in turn, Adam); it needs a larger DEVICE_CHECK_BUDGET (450) to finish.
# Every file lands in $DEVICE_CHECK_FILES (default /tmp/nst-device-check): e2e-PX/ (e2e.json and
# each run's --report), e2e-device-PX.md (the generated section for BENCHMARKS.md), lbfgs.md,
# largest.md, the logs, versions and nvidia-smi; on exit they are packed into
# $OUT/device_check.tgz (the device tool brings back at most 8 files), with the summaries beside
# it ($OUT defaults to bench/results/device).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
# The device tool brings back at most 8 files: every file goes to $files, and on exit one archive
# of them plus the summaries go to $OUT.
dest="${OUT:-bench/results/device}"
files="${DEVICE_CHECK_FILES:-/tmp/nst-device-check}"
out=$files
mkdir -p "$out" "$dest"
pack() {
  rm -rf /tmp/nst-e2e-work-* /tmp/nst-compile-*.png  # the e2e's weights and images (GBs), kept for the compile runs
  tar czf "$dest/device_check.tgz" -C "$files" . 2>/dev/null
  for path in "$files"/{device_check.log,e2e-device-*.md,largest.md,step.md,lbfgs.md}; do
    [[ -f "$path" && "$files" != "$dest" ]] && cp "$path" "$dest/"
  done
}
trap pack EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
started=$(date +%s)
log() { echo "[device_check $(( $(date +%s) - started ))s] $*" | tee -a "$out/device_check.log"; }

# Every step's limit is also cut to what is left of $budget seconds, so that the whole check
# ends in time whatever one step takes (each step writes what it finished as it goes).
if (( dry )); then
  export JAX_PLATFORMS=cpu
  budget=900 sizes="64:20,48:20" tests=(tests/test_lbfgs.py) test_timeout=300 e2e_timeout=300
  step_sizes=32 step_timeout=200 largest_sizes="32,48" largest_timeout=120 lbfgs_sizes=32 lbfgs_timeout=120
  compile_flags=("--xla_cpu_enable_fast_math=false") compile_timeout=120 first_timeout=300
else
  # 512:500 is the goal's run (500 L-BFGS iterations at 512 px), in float32 and bfloat16.
  budget=${DEVICE_CHECK_BUDGET:-360}
  # Seen on an H200 (BENCHMARKS.md): a cold nst-jax run ~40 s (XLA's autotuning), warm 7 s,
  # PyTorch's 13-17 s; the bfloat16 run compiles anew (~40 s). So bfloat16 at the first size only.
  sizes=${DEVICE_CHECK_SIZES:-512:500,1024:200} first_timeout=150 e2e_timeout=100
  step_sizes=${DEVICE_CHECK_STEP_SIZES:-none} step_timeout=60 lbfgs_sizes=512,1024 lbfgs_timeout=45
  largest_sizes="8192,12288,16384" largest_timeout=90 test_timeout=${DEVICE_CHECK_TEST_TIMEOUT:-40}
  tests=(tests/test_lbfgs.py tests/test_losses.py tests/test_vgg_numerics.py tests/test_batch.py)
  # Cold runs under other XLA flags (compile time against step time), e.g.
  # DEVICE_CHECK_COMPILE_FLAGS="--xla_gpu_autotune_level=0;--xla_gpu_enable_triton_gemm=false"
  IFS=';' read -r -a compile_flags <<< "${DEVICE_CHECK_COMPILE_FLAGS:-}"
  compile_timeout=60
  # The whole chip for the largest image (JAX takes 75 % of it by default).
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
  if ! $python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
      log "installing the carried wheels into /tmp/site"
      $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
  fi
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
limit() {  # the smaller of a step's own limit and what is left of the budget (at least 1 s)
  local left=$(( budget - ($(date +%s) - started) ))
  (( left < 1 )) && left=1
  echo $(( $1 < left ? $1 : left ))
}
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

# One e2e run per size, each with its own limit: a slow size cannot take the others' time.
dtypes=(--extra-dtypes bfloat16) limit_s=$first_timeout
for pair in ${sizes//,/ }; do
  px=${pair%%:*}
  log "end to end: $pair ${dtypes[*]:-}"
  timeout "$(limit "$limit_s")" $python -m bench e2e --sizes "$pair" --adam-sizes none --no-batch \
    --no-second-call ${dtypes[@]:+"${dtypes[@]}"} --out "$out/e2e-$px" --markdown "$out/e2e-device-$px.md" \
    --keep "/tmp/nst-e2e-work-$px" > "$out/e2e-$px.log" 2>&1
  log "end to end $px: exit $?"
  cp /tmp/nst-e2e-work-"$px"/*.json "$out/e2e-$px/" 2>/dev/null  # every run's --report
  dtypes=() limit_s=$e2e_timeout
done
log "one L-BFGS update in each form (diagnosis): $lbfgs_sizes px"
timeout "$(limit "$lbfgs_timeout")" $python -m bench lbfgs --sizes "$lbfgs_sizes" --out "$out/lbfgs.json" \
  > "$out/lbfgs.md" 2> "$out/lbfgs.log"
log "lbfgs: exit $?"
# Compile time (diagnosis): a cold CLI run at the first size under each XLA flag in $compile_flags,
# against the e2e's cold run (XLA's autotuning is most of a GPU compile).
first=${sizes%%,*} px=${first%%:*} work="/tmp/nst-e2e-work-${first%%:*}"
for flags in ${compile_flags[@]:+"${compile_flags[@]}"}; do
  name=$(echo "$flags" | tr -c 'a-z0-9\n' '_' | sed 's/^_*//')
  log "cold run with XLA_FLAGS=$flags"
  NST_JAX_CACHE=$(mktemp -d) XLA_FLAGS="$flags" timeout "$(limit "$compile_timeout")" $python -m nst_jax.run \
    "$work/tubingen_$px.png" "$work/starry_night_$px.png" --weights "$work/vgg19_caffe_synthetic.npz" \
    -o "/tmp/nst-compile-$name.png" --image-size "$px" --num-steps 100 --print-every 0 \
    --preset neural-style --tv-weight 0 --init content --report "$out/compile-$name.json" > /dev/null 2>> "$out/compile.log"
  status=$?
  log "  exit $status: $($python -c "
import json, sys
r = json.load(open(sys.argv[1])); v = r['visits']
print(f\"compile {r.get('compile_seconds', 0):.1f} s, {1000 * (v[-1]['seconds'] - v[0]['seconds']) / (v[-1]['step'] - v[0]['step']):.2f} ms/step, loss {sum(v[-1]['losses']) / len(v[-1]['losses']):.6g}\")
" "$out/compile-$name.json" 2>/dev/null)"
done
if [[ "$step_sizes" != none ]]; then
  log "the step (diagnosis): $step_sizes px, Adam and L-BFGS, against PyTorch's"
  timeout "$(limit "$step_timeout")" $python -m bench --sizes "$step_sizes" --optimizers adam,lbfgs \
    --dtypes float32 --steps 5 --warmup 2 --long-chunk-steps 10 --batch-sizes none --long-run none \
    --out "$out" --markdown "$out/step.md" > "$out/step.log" 2>&1
  log "step: exit $?"
fi
log "tests"
timeout "$(limit "$test_timeout")" $python -m pytest -q -p no:cacheprovider "${tests[@]}" > "$out/tests.log" 2>&1
log "tests: exit $? ($(tail -1 "$out/tests.log"))"
# Last: at 8192 px it needs ~90 s more than the default budget leaves (DEVICE_CHECK_BUDGET=450).
log "largest image on one device: $largest_sizes"
timeout "$(limit "$largest_timeout")" $python -m bench largest --sizes "$largest_sizes" --steps 2 --out "$out" \
  > "$out/largest.md" 2> "$out/largest.log"
log "largest: exit $?"
log "done in $(( $(date +%s) - started )) s; files in $out"
ls -la "$out" >> "$out/device_check.log"
