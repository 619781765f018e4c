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
# The device tool brings back at most 8 files: every file goes to $out, and on exit one archive
# of them plus the summaries go to $dest ($OUT there).
dest="${OUT:-bench/results/device}"
out="${DEVICE_CHECK_FILES:-/tmp/nst-device-check}"
work=/tmp/nst-e2e-work  # the e2e's weights and images (GBs), shared by its runs and the compile runs
mkdir -p "$out" "$dest"
pack() {
  rm -rf "$work" /tmp/nst-compile.png
  tar czf "$dest/device_check.tgz" -C "$out" . 2>/dev/null
  [[ "$out" == "$dest" ]] && return
  for path in "$out"/{device_check.log,e2e-device-*.md,largest.md,step.md,lbfgs.md}; do
    [[ -f "$path" ]] && cp "$path" "$dest/"
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
  # One quick test stands for the tests step: the suite that runs this dry run runs them all.
  # One e2e size: each costs 6-7 processes (~35 s of the suite); later sizes differ only in
  # leaving the extra dtype out.
  budget=900 sizes="64:20" tests=(tests/test_lbfgs.py::test_first_step_is_capped_by_the_gradient_l1_norm)
  test_timeout=300 e2e_timeout=300
  # The matrix-multiply peak at one small size: the default sizes take ~15 s on this CPU.
  step_extra=(--matmul-sizes 128)
  step_sizes=32 step_optimizers=adam step_timeout=200 largest_sizes=32 largest_timeout=120 lbfgs_sizes=32
  lbfgs_timeout=120
  compile_flags=("--xla_cpu_enable_fast_math=false") compile_timeout=120 first_timeout=300
else
  # 512:500 is the goal's run (500 L-BFGS iterations at 512 px), in float32 and bfloat16.
  budget=${DEVICE_CHECK_BUDGET:-360}
  # Seen on an H200 (BENCHMARKS.md): a cold nst-jax run ~40 s (XLA's autotuning), warm 7 s,
  # PyTorch's 13-17 s; the bfloat16 run compiles anew (~40 s). So bfloat16 at the first size only.
  sizes=${DEVICE_CHECK_SIZES:-512:500,1024:200} first_timeout=150 e2e_timeout=100
  step_sizes=${DEVICE_CHECK_STEP_SIZES:-none} step_optimizers=adam,lbfgs step_timeout=60 step_extra=()
  lbfgs_sizes=512,1024 lbfgs_timeout=45
  largest_sizes="8192,12288,16384" largest_timeout=90 test_timeout=${DEVICE_CHECK_TEST_TIMEOUT:-40}
  tests=(tests/test_lbfgs.py tests/test_losses.py tests/test_vgg_numerics.py tests/test_batch.py)
  # Cold runs under other XLA flags (compile time against step time), e.g.
  # DEVICE_CHECK_COMPILE_FLAGS="--xla_gpu_autotune_level=0;--xla_gpu_enable_triton_gemm=false"
  IFS=';' read -r -a compile_flags <<< "${DEVICE_CHECK_COMPILE_FLAGS:-}"
  compile_timeout=60
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

# step NAME LIMIT_S STDOUT STDERR COMMAND...: one step under its time limit, logged with its exit.
step() {
  local name=$1 limit_s=$2 stdout=$3 stderr=$4 status
  shift 4
  timeout "$(limit "$limit_s")" "$@" > "$stdout" 2> "$stderr"
  status=$?
  log "$name: exit $status"
}

# One e2e run per size, each with its own limit: a slow size cannot take the others' time.
dtypes=(--extra-dtypes bfloat16) limit_s=$first_timeout
for pair in ${sizes//,/ }; do
  px=${pair%%:*}
  log "end to end: $pair ${dtypes[*]:-}"
  step "end to end $px" "$limit_s" "$out/e2e-$px.log" "$out/e2e-$px.err" \
    $python -m bench e2e --sizes "$pair" --adam-sizes none --no-batch --no-second-call \
    ${dtypes[@]:+"${dtypes[@]}"} --out "$out/e2e-$px" --markdown "$out/e2e-device-$px.md" --keep "$work"
  cp "$work"/*_"$px"_*.json "$out/e2e-$px/" 2>/dev/null  # every run's --report
  dtypes=() limit_s=$e2e_timeout
done
log "one L-BFGS update in each form (diagnosis): $lbfgs_sizes px"
step lbfgs "$lbfgs_timeout" "$out/lbfgs.md" "$out/lbfgs.log" \
  $python -m bench lbfgs --sizes "$lbfgs_sizes" --out "$out/lbfgs.json"
# Compile time (diagnosis): a cold CLI run (e2e's command, 100 iterations) at the first size
# under each XLA flag in $compile_flags, against the e2e's cold run.
first=${sizes%%,*}
for flags in ${compile_flags[@]:+"${compile_flags[@]}"}; do
  log "cold run with XLA_FLAGS=$flags"
  XLA_FLAGS="$flags" timeout "$(limit "$compile_timeout")" $python - "$work" "${first%%:*}" "$out" \
    >> "$out/device_check.log" 2>> "$out/compile.log" <<'EOF'
import os, sys, tempfile
from pathlib import Path
from bench import e2e
work, size, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
content, style = (work / f"{Path(name).stem}_{size}.png" for name in e2e.PICTURES)
report = out / ("compile-" + "".join(c if c.isalnum() else "_" for c in os.environ["XLA_FLAGS"]).strip("_") + ".json")
env = {**os.environ, "NST_JAX_CACHE": tempfile.mkdtemp()}
run = e2e.run_process(e2e._ours(content, style, work / "vgg19_caffe_synthetic.npz", size, 100, "lbfgs",
                                "/tmp/nst-compile.png", report), env, report)
print(f"  compile {run.breakdown()['compile']:.1f} s, {1000 * run.seconds_per_step():.2f} ms/step, "
      f"objective {run.final_loss:.6g}, wall {run.wall_s:.1f} s")
EOF
  log "  exit $?"
done
if [[ "$step_sizes" != none ]]; then
  log "the step (diagnosis): $step_sizes px, $step_optimizers, against PyTorch's"
  step step "$step_timeout" "$out/step.log" "$out/step.err" \
    $python -m bench --sizes "$step_sizes" --optimizers "$step_optimizers" --dtypes float32 --steps 5 --warmup 2 \
    --long-chunk-steps 10 --batch-sizes none --long-run none ${step_extra[@]:+"${step_extra[@]}"} --out "$out" \
    --markdown "$out/step.md"
fi
log "tests"
step tests "$test_timeout" "$out/tests.log" "$out/tests.err" \
  $python -m pytest -q -p no:cacheprovider "${tests[@]}"
log "  $(tail -1 "$out/tests.log")"
# Last: at 8192 px it needs ~90 s more than the default budget leaves (DEVICE_CHECK_BUDGET=450),
# and the whole chip (JAX takes 75 % of it by default).
log "largest image on one device: $largest_sizes"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 step largest "$largest_timeout" "$out/largest.md" "$out/largest.log" \
  $python -m bench largest --sizes "$largest_sizes" --steps 2 --out "$out"
log "done in $(( $(date +%s) - started )) s; files in $out"
ls -la "$out" >> "$out/device_check.log"
