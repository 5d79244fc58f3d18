#!/usr/bin/env bash
# Reference runs on a GPU with the JAX backend (issue #5): fast_cnn for three
# seeds in mixed_bfloat16, then cnn_regularized at the study's full recipe
# (50 epochs, early stopping), all with --track-test for time-to-accuracy.
#
# Usage (from the repository root, with keras + jax installed, no TensorFlow
# needed; PYTHON names the interpreter, default python3):
#   bench/gpu_runs.sh DATA OUT [DEADLINE_SECONDS]
# DATA: a local CIFAR-10 copy (what `--data` takes). OUT: a folder that
# receives the log, one .tgz per finished run and, for a run cut off by the
# deadline, its history so far. Each training gets the time left before
# DEADLINE_SECONDS (default 540) so the script ends on time; fast_cnn's seeds 1
# and 2 reuse seed 0's XLA compilations through JAX's persistent cache.
set -u
usage="usage: bench/gpu_runs.sh DATA OUT [DEADLINE_SECONDS] (from the repository root)"
data=${1:?$usage} out=${2:?$usage} deadline=${3:-540}
[[ -f cifar/__main__.py ]] || { echo "run this from the repository root. $usage" >&2; exit 2; }
# A fresh artifacts root unless one is given: the runs packed at the end are
# only the ones this script trained.
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 CIFAR_ARTIFACTS=${CIFAR_ARTIFACTS:-$(mktemp -d)}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
mkdir -p "$out" "$CIFAR_ARTIFACTS"
before=$(ls "$CIFAR_ARTIFACTS/runs" "$CIFAR_ARTIFACTS/work" 2>/dev/null)
log=$out/gpu_runs.log
: >"$log"
start=$SECONDS
python=${PYTHON:-python3}

{ date -u; nvidia-smi -L; "$python" -c "import jax, keras, numpy, pandas, pyarrow, sklearn, PIL;
print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__,
      'pandas', pandas.__version__, 'pyarrow', pyarrow.__version__, 'sklearn', sklearn.__version__)"; } >>"$log" 2>&1

train() {  # train MODEL [ARGS...] with the time left, logging to $log
    local left=$((deadline - (SECONDS - start)))
    if ((left < 30)); then echo "skipped $* (${left}s left)" >>"$log"; return; fi
    echo "== $(date -u +%T) train $* (${left}s left)" >>"$log"
    timeout --signal=KILL "$left" "$python" -m cifar train "$@" --data "$data" --track-test --quiet \
        --note "GPU reference run (bench/gpu_runs.sh, KERAS_BACKEND=jax)" >>"$log" 2>&1
    local rc=$?
    echo "== $(date -u +%T) exit $rc" >>"$log"
}

train fast_cnn --precision mixed_bfloat16 --seed 0
train fast_cnn --precision mixed_bfloat16 --seed 1
train fast_cnn --precision mixed_bfloat16 --seed 2
train cnn_regularized

new() { [[ -d $1 ]] && ! grep -qxF "$(basename "$1")" <<<"$before"; }
for dir in "$CIFAR_ARTIFACTS"/runs/*; do
    new "$dir" && tar -czf "$out/$(basename "$dir").tgz" -C "$(dirname "$dir")" "$(basename "$dir")"
done
# A run cut off by the deadline: its history so far (its checkpoint, with the
# optimizer's state, is too large to bring back from a lent machine).
for dir in "$CIFAR_ARTIFACTS"/work/*; do
    new "$dir" && [[ -f $dir/state.json ]] && cp "$dir/state.json" "$out/unfinished-$(basename "$dir").json"
done
grep -v "^\s*$" "$log" | grep -E "^==|test accuracy|error|Error|skipped|jax |NVIDIA" | tail -40
