#!/usr/bin/env bash
# The GPU session of issue 12 (item 5) as one prepared script: install, machine info, the
# FusedAttention (cuDNN) check, full-size Figs. 3 and 5, the `make bench` benchmarks, and a
# Markdown summary to paste into BENCHMARKS.md. Run it from the repository root:
#
#   bash benchmarks/gpu_suite.sh --quick              # < 10 min on one H200 (time-boxed)
#   bash benchmarks/gpu_suite.sh                      # full: full-size Fig. 5 too (hours?)
#   bash benchmarks/gpu_suite.sh --install-only       # install in one command, then
#   bash benchmarks/gpu_suite.sh --quick --no-install # measure in the next
#   PYTHON=.venv/bin/python JAX_PLATFORMS=cpu bash benchmarks/gpu_suite.sh --dry-run
#                                                     # CPU check of this script, toy sizes
#
# Options:
#   --quick        Fig. 3 in full, Fig. 5 with sweep.starts=16 (of 1024), the benchmarks at
#                  their default sizes; every step is time-boxed so that the whole run ends
#                  within --budget seconds (default 570); steps that no longer fit are skipped.
#   --dry-run      (alias --cpu-smoke) no install; every step at smoke size; a benchmark that
#                  needs torch is skipped if torch is missing.
#   --out DIR      output directory (default: $OUT if set, else out/gpu).
#   --budget S     wall-clock budget in seconds for everything after the install (0 = none;
#                  default 570 for --quick, 0 otherwise).
#   --no-install   use $PYTHON, else an existing $VENV, else python3, as it is.
#   --install-only create the venv and install, print the machine info, stop.
# Environment: PYTHON (use this interpreter, no venv), VENV (default .venv-gpu),
#   TORCH_INDEX_URL (where torch for the peers comes from; default the CPU-only wheels: the
#   peers run on the CPU, and a CUDA torch would pull its own nvidia-* libraries, which can
#   clash with the cuDNN that jax[cuda12] needs; set it empty to take torch from PyPI).
#
# Every step runs even if an earlier one failed: its status ("ok", "failed (exit N)",
# "timed out", "skipped (...)") and wall time go to the summary table. Outputs under DIR:
#   suite.log (everything), logs/<step>.log, machine.txt, fused_attention.md,
#   bench_results/<script>.md (via TF_BENCH_RESULTS; bench_scale_out.md: weak scaling over
#   every local device, bench_lanes.md: solve_batch's work queue against the lock-stepped
#   batch), figure3/, figure5*/ (datasets, PNGs),
#   figure*_summary.json, steps.tsv, summary.md.
set -euo pipefail

MODE=full
INSTALL=1
INSTALL_ONLY=0
BUDGET=
OUTDIR=${OUT:-out/gpu}
VENV=${VENV:-.venv-gpu}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --quick) MODE=quick ;;
        --full) MODE=full ;;
        --dry-run | --cpu-smoke) MODE=smoke ;;
        --out) OUTDIR=$2; shift ;;
        --out=*) OUTDIR=${1#--out=} ;;
        --budget) BUDGET=$2; shift ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        --no-install) INSTALL=0 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_suite.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $MODE == smoke ]] && INSTALL=0
if [[ -z $BUDGET ]]; then
    if [[ $MODE == quick ]]; then BUDGET=570; else BUDGET=0; fi
fi
[[ -f pyproject.toml && -d benchmarks && -d configs ]] || {
    echo "gpu_suite.sh: run me from the repository root" >&2
    exit 2
}

mkdir -p "$OUTDIR/logs" "$OUTDIR/bench_results"
OUTDIR=$(cd "$OUTDIR" && pwd)
STEPS=$OUTDIR/steps.tsv
: >"$STEPS"
exec > >(tee -a "$OUTDIR/suite.log") 2>&1

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n[gpu_suite %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# record NAME STATUS SECONDS WHAT OUTPUT COMMAND: one line of steps.tsv (no tabs or newlines
# inside a field; long commands cut).
record() {
    local fields=() field
    for field in "$@"; do
        field=${field//$'\t'/ }
        fields+=("${field//$'\n'/ }")
    done
    fields[5]=${fields[5]:0:300}
    (IFS=$'\t' && printf '%s\n' "${fields[*]}") >>"$STEPS"
}

# step NAME CAP WHAT OUTPUT CMD... : run CMD (cap seconds at most, 0 = no cap, and never past
# the budget), log it, record status and wall time. Never fails itself.
step() {
    local name=$1 cap=$2 what=$3 output=$4
    shift 4
    local limit=$cap left
    if ((BUDGET > 0)); then
        left=$((BUDGET - (SECONDS - BUDGET_START) - 15))
        if ((left < 30)); then
            say "skip $name: ${left}s of the ${BUDGET}s budget left"
            record "$name" "skipped (time budget)" "-" "$what" "-" "$*"
            return 0
        fi
        if ((limit == 0 || limit > left)); then limit=$left; fi
    fi
    if ((limit > 0)); then say "step $name (limit ${limit}s): $*"; else say "step $name: $*"; fi
    local t0 rc status
    t0=$(now)
    set +e
    if ((limit > 0)); then
        timeout -k 20 "$limit" "$@" 2>&1 | tee "$OUTDIR/logs/$name.log"
    else
        "$@" 2>&1 | tee "$OUTDIR/logs/$name.log"
    fi
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out (${limit}s)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    local seconds
    seconds=$(since "$t0")
    say "step $name: $status after ${seconds}s"
    record "$name" "$status" "$seconds" "$what" "$output" "$*"
}

skip() { # skip NAME WHY WHAT COMMAND
    say "skip $1: $2"
    record "$1" "skipped ($2)" "-" "$3" "-" "$4"
}

# --------------------------------------------------------------------------- 1. environment
BUDGET_START=$SECONDS
say "mode $MODE, output $OUTDIR, budget ${BUDGET}s (0 = none), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif ((INSTALL)); then
    PY=$VENV/bin/python
    if [[ ! -x $PY ]]; then
        step venv 300 "create the venv $VENV" "$VENV" python3 -m venv "$VENV"
        [[ -x $PY ]] || PY=python3
    fi
elif [[ -x $VENV/bin/python ]]; then
    PY=$VENV/bin/python
else
    PY=python3
fi

if ((INSTALL)); then
    step pip-upgrade 300 "upgrade pip" "-" "$PY" -m pip install --quiet --upgrade pip
    if [[ -n ${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu} ]]; then
        step torch-cpu 900 "torch for the peers (CPU wheels)" "-" \
            "$PY" -m pip install --quiet 'torch==2.13.0' \
            --index-url "${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
    fi
    step install 1200 "pip install -e '.[dev,bench,cuda]'" "-" \
        "$PY" -m pip install --quiet -e '.[dev,bench,cuda]'
fi
# The budget counts from the start, install included, so that --quick with an install still
# ends inside one 10-minute command (it then skips more of the benchmarks).

cat >"$OUTDIR/machine_info.sh" <<'INFO'
# Machine information for gpu_suite.sh; $PY is the interpreter.
echo "## date"
date -u
echo "## git"
git rev-parse HEAD 2>/dev/null || true
git status --short 2>/dev/null | head -20 || true
echo "## nvidia-smi"
if command -v nvidia-smi >/dev/null; then nvidia-smi || true; else echo "nvidia-smi: not found"; fi
echo "## CPU"
(lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)') || nproc
echo "## memory"
(free -g 2>/dev/null) || true
echo "## python $PY"
"$PY" -c 'import sys; print(sys.version)'
"$PY" -m pip list 2>/dev/null | grep -iE \
    '^(jax|jaxlib|jax-cuda|nvidia-(cudnn|cublas|cuda-runtime)|diffrax|equinox|torch|torchdiffeq|numpy|transformer-flows)' ||
    true
echo "## jax"
"$PY" - <<'PYEOF'
import jax

print("jax", jax.__version__, "backend", jax.default_backend())
print("devices", jax.devices())
for d in jax.devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    print(f"  {d}: {d.device_kind}" + (f", {limit / 2**30:.1f} GiB for JAX" if limit else ""))
jax.print_environment_info()
PYEOF
INFO
step machine-info 300 "nvidia-smi, CPU, versions, jax.devices()" machine.txt \
    env PY="$PY" bash "$OUTDIR/machine_info.sh"
cp "$OUTDIR/logs/machine-info.log" "$OUTDIR/machine.txt" 2>/dev/null || true
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
JAX_LINE=$("$PY" -c 'import jax; print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}) x{jax.device_count()}")' 2>/dev/null || echo "JAX: import failed")
say "$JAX_LINE${GPU_NAME:+; $GPU_NAME}"

if ((INSTALL_ONLY)); then
    say "--install-only: done; next: bash benchmarks/gpu_suite.sh --quick --no-install"
    exit 0
fi

export PYTHONPATH=.:benchmarks${PYTHONPATH:+:$PYTHONPATH}
export TF_BENCH_RESULTS=$OUTDIR/bench_results
CLI=("$PY" -m transformer_flows.cli)

# --------------------------------------------------------------------------- 2. FusedAttention
cat >"$OUTDIR/fused_check.py" <<'EOF'
"""FusedAttention (jax.nn.dot_product_attention; cuDNN on GPU) against DenseAttention through
tf.attend: max |error| against a float32 dense reference at matmul precision "highest", and
the median time of `repeats` calls (compile excluded, block_until_ready).
Usage: fused_check.py NS D REPEATS OUT.md   (NS comma-separated)."""

import statistics
import sys
import time

import jax
import jax.numpy as jnp

import transformer_flows as tf

ns = [int(v) for v in sys.argv[1].split(",")]
d, repeats, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
beta = 4.0
gpu = jax.default_backend() == "gpu"
methods = {
    "dense": tf.DenseAttention(),
    "fused (JAX chooses)": tf.FusedAttention(),
    "fused xla": tf.FusedAttention(implementation="xla"),
}
if gpu:
    methods["fused cudnn (forced)"] = tf.FusedAttention(implementation="cudnn")
# Tolerated error against the float32 "highest" reference: rounding of the inputs and of the
# kernel's arithmetic (bfloat16: 8 bits of mantissa; float32 matmuls may run in TF32 on GPU).
tolerance = {"float32": 2e-3, "bfloat16": 5e-2}


def attend(method, dtype):
    def f(x):
        return tf.attend(x, jnp.asarray(beta, dtype), None, None, None, normalized=True,
                         method=method)

    return jax.jit(f)


rows, problems = [], []
devices = ", ".join(sorted({dv.device_kind for dv in jax.devices()}))


def write(done=False):
    """The table so far (rewritten after every row: a timeout keeps what was measured)."""
    lines = [
        f"FusedAttention vs DenseAttention through tf.attend, SA, d = {d}, β = {beta}, single "
        f"head; JAX {jax.__version__} on {jax.default_backend()} ({devices}); error = max |out - "
        f"dense float32 at matmul precision 'highest'|; time = median of {repeats} calls, "
        f"compile excluded; AutoAttention = what AutoAttention() picks for this n and dtype.",
        "",
        "| n | dtype | method | AutoAttention | max error | median s | first call s | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    if not gpu:
        lines += ["", "No GPU backend: cuDNN not reachable; only XLA's implementation ran."]
    if not done:
        lines += ["", "(incomplete: the check did not finish)"]
    lines += ["", "Problems: " + ("; ".join(problems) if problems else "none")]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


for n in ns:
    x32 = tf.sample_sphere(jax.random.key(n), n, d).astype(jnp.float32)
    with jax.default_matmul_precision("highest"):
        reference = attend(tf.DenseAttention(), jnp.float32)(x32).block_until_ready()
    for dtype in (jnp.float32, jnp.bfloat16):
        name = jnp.dtype(dtype).name
        x = x32.astype(dtype)
        chosen = type(tf.AutoAttention().choose(n, n, dtype, True)).__name__
        for label, method in methods.items():
            fn = attend(method, dtype)
            try:
                start = time.perf_counter()
                y = fn(x).block_until_ready()
                first = time.perf_counter() - start
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    fn(x).block_until_ready()
                    times.append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - report and go on
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                rows.append([n, name, label, chosen, "error", "-", "-", message])
                problems.append(f"n={n} {name} {label}: {message}")
                print(rows[-1], flush=True)
                write()
                continue
            error = float(jnp.max(jnp.abs(y.astype(jnp.float32) - reference)))
            ok = error <= tolerance[name]
            if not ok:
                problems.append(f"n={n} {name} {label}: error {error:.2e} > {tolerance[name]}")
            rows.append([n, name, label, chosen, f"{error:.2e}", f"{statistics.median(times):.3g}",
                         f"{first:.3g}", "ok" if ok else "CHECK"])
            print(rows[-1], flush=True)
            write()

print(write(done=True))
sys.exit(1 if problems else 0)
EOF

case $MODE in
    smoke) FUSED_ARGS=("16,64" 8 2) ;;
    quick) FUSED_ARGS=("256,1024,4096,16384" 64 10) ;;
    full) FUSED_ARGS=("256,1024,4096,16384,32768" 64 20) ;;
esac
step fused-attention 180 "FusedAttention vs DenseAttention, f32 and bf16, n=${FUSED_ARGS[0]}, d=${FUSED_ARGS[1]}" \
    fused_attention.md "$PY" "$OUTDIR/fused_check.py" "${FUSED_ARGS[@]}" "$OUTDIR/fused_attention.md"

# --------------------------------------------------------------------------- 3. figures
# figure NAME CONFIG CAP WHAT SUMMARIZE_TIMES [overrides...]
figure() {
    local name=$1 config=$2 cap=$3 what=$4 times=$5
    shift 5
    local smoke=()
    [[ $MODE == smoke ]] && smoke=(--smoke)
    step "$name" "$cap" "$what" "$name/" \
        "${CLI[@]}" run "$config" --out "$OUTDIR/$name" --no-progress "${smoke[@]}" "$@"
    # shellcheck disable=SC2086,SC2016 # $times: a list of numbers; $1, $@: for the inner bash
    step "$name-summary" 120 "transformer-flows summarize $name" "${name}_summary.json" \
        bash -c 'set -o pipefail; out=$1; shift; "$@" | tee "$out"' _ \
        "$OUTDIR/${name}_summary.json" "${CLI[@]}" summarize "$OUTDIR/$name" --times $times
}

case $MODE in
    smoke)
        figure figure3 configs/figure3.yaml 600 "Fig. 3 (smoke size)" "3 6"
        figure figure5 configs/figure5.yaml 600 "Fig. 5 (smoke size)" "1.5 3"
        ;;
    quick)
        figure figure3 configs/figure3.yaml 300 "Fig. 3, full size (6 d × 90 β × 1024 starts)" "15 30"
        figure figure5_starts16 configs/figure5.yaml 150 \
            "Fig. 5 REDUCED (quick mode): sweep.starts=16 of 1024 (4 ensembles × 90 β × 16)" \
            "15 30" sweep.starts=16
        ;;
    full)
        figure figure3 configs/figure3.yaml 0 "Fig. 3, full size (6 d × 90 β × 1024 starts)" "15 30"
        ;;
esac

# --------------------------------------------------------------------------- 4. benchmarks
# The `make bench` list, in an order that puts the GPU-relevant ones first (--quick may run out
# of budget); bench_fig3a's torch peers run on the CPU.
bench() { # bench SCRIPT CAP ARGS...
    local script=$1 cap=$2
    shift 2
    step "$script" "$cap" "benchmarks/$script.py $*" "bench_results/$script.md" \
        "$PY" "benchmarks/$script.py" "$@"
}
HAVE_TORCH=0
"$PY" -c 'import torch, torchdiffeq' 2>/dev/null && HAVE_TORCH=1

# Issue 22: the scale-out run (weak scaling of `run_sweep` over every local device of the
# machine: 1, 2, 4, ... up to all of them) and the no-idle-lane comparison (`solve_batch`'s
# work queue against the lock-stepped batch, lanes = B). On a CPU dry run the devices are
# simulated (bench_scale_out.py sets --xla_force_host_platform_device_count itself).
if [[ $MODE == smoke ]]; then
    SCALE_DEVICES=(1 2)
else
    NDEV=$("$PY" -c 'import jax; print(jax.local_device_count())' 2>/dev/null || echo 1)
    SCALE_DEVICES=(1)
    for ((d = 2; d < NDEV; d *= 2)); do SCALE_DEVICES+=("$d"); done
    ((NDEV > 1)) && SCALE_DEVICES+=("$NDEV")
fi
case $MODE in
    smoke)
        bench bench_scale_out 300 --devices "${SCALE_DEVICES[@]}" --chunk-size 8 \
            --chunks-per-device 1 --repeats 1
        bench bench_lanes 300 --betas 2 --starts 4 --lanes 8 4 --rounds 1
        ;;
    quick)
        bench bench_scale_out 120 --devices "${SCALE_DEVICES[@]}" --chunk-size 4096 \
            --chunks-per-device 2 --repeats 2
        bench bench_lanes 120 --betas 16 --starts 128 --lanes 2048 256 64 --rounds 3
        ;;
    full)
        bench bench_scale_out 0 --devices "${SCALE_DEVICES[@]}" --chunk-size 16384 \
            --chunks-per-device 4 --repeats 3
        bench bench_lanes 0 --betas 90 --starts 128 --lanes 11520 1440 256 --rounds 5
        ;;
esac
case $MODE in
    smoke)
        bench bench_throughput 600 --betas 2 --starts 4 --panel-starts 1 --repeats 1
        bench bench_scaling_n 600 --ns 256 --solve-max-n 256 --repeats 1
        bench bench_grad_compile 600 --batch 2 --ns 256 --repeats 1
        bench bench_span 600 --ds 2 64 --batch 2 --repeats 1
        bench bench_span_interleaved 600 --ds 32 64 --batch 2 --rounds 1
        bench bench_fig5 600 --ensembles goe:wishart ginibre:qk --betas 1 --starts 2 --t1 1 \
            --num 5 --repeats 1 --tolerances --bosh3
        FIG3A=(--betas 2 --starts 2 --repeats 1 --quick)
        ;;
    quick)
        bench bench_throughput 150
        bench bench_fig5 200 --quick --starts 64
        bench bench_scaling_n 120
        bench bench_grad_compile 150
        bench bench_span 120
        bench bench_span_interleaved 90
        FIG3A=(--quick)
        ;;
    full)
        bench bench_throughput 0 --betas 90 --starts 1024 --panel-starts 64
        bench bench_scaling_n 0 --ns 256 1024 4096 16384 65536 --dense-max-n 65536 \
            --solve-max-n 16384
        bench bench_grad_compile 0 --ns 1024 4096 16384 65536
        bench bench_span 0
        bench bench_span_interleaved 0
        bench bench_fig5 0 --starts 256
        FIG3A=()
        ;;
esac
if ((HAVE_TORCH)); then
    bench bench_fig3a 300 "${FIG3A[@]}"
else
    skip bench_fig3a "torch/torchdiffeq not installed" "benchmarks/bench_fig3a.py (torch peers)" \
        "benchmarks/bench_fig3a.py ${FIG3A[*]}"
fi
# The work-precision plot lands in bench_results/ too (TF_BENCH_RESULTS).

if [[ $MODE == full ]]; then
    figure figure5 configs/figure5.yaml 0 "Fig. 5, full size (4 ensembles × 90 β × 1024 starts, d = 128)" "15 30"
fi

# --------------------------------------------------------------------------- 5. summary
{
    echo "### GPU suite, mode \`$MODE\` ($(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo
    echo "- machine: ${GPU_NAME:-no nvidia-smi}; $JAX_LINE; $(nproc) CPU cores"
    case $MODE in quick) flag=" --quick" ;; smoke) flag=" --dry-run" ;; *) flag= ;; esac
    echo "- command: \`bash benchmarks/gpu_suite.sh$flag\`; files under \`$OUTDIR\`"
    [[ $MODE == quick ]] && echo "- quick mode: Fig. 5 ran with **sweep.starts=16** (of 1024), not full size"
    [[ $MODE == smoke ]] && echo "- dry run: every step at smoke size; these times say nothing about a GPU"
    echo
    echo "| step | what | status | wall s | output |"
    echo "|---|---|---|---|---|"
    while IFS=$'\t' read -r name status seconds what output _command; do
        echo "| $name | $what | $status | $seconds | \`$output\` |"
    done <"$STEPS"
    echo
    echo "Total wall time: $((SECONDS))s. Figures' own timings (\"s this call, s computing\"):"
    echo
    for f in "$OUTDIR"/logs/figure*.log; do
        [[ -f $f ]] || continue
        grep -h ': dataset ' "$f" | sed 's/^/- /' || true
    done
    if [[ -f $OUTDIR/fused_attention.md ]]; then
        echo
        cat "$OUTDIR/fused_attention.md"
    fi
} >"$OUTDIR/summary.md"
say "summary ($OUTDIR/summary.md):"
echo
cat "$OUTDIR/summary.md"
FAILED=$(awk -F'\t' '$2 !~ /^(ok|skipped)/' "$STEPS" | wc -l)
say "done in ${SECONDS}s; $FAILED step(s) failed or timed out (see the table)"
