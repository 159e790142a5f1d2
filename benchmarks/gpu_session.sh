#!/usr/bin/env bash
# The GPU checks, sized to a 15-minute lease (the machine's start and idle minutes included; one
# command runs 600 s at most). Two calls, the figures that matter first; each part writes its
# results file to $OUT (the device tool's folder) or ./gpu-out as soon as it ends, so a call cut
# short still returns what it finished:
#
#     bash benchmarks/gpu_session.sh              # call 1 (parts' limits add up to 410 s): the GPU-only
#                                                 # tests; DeiT-T at 1.7x and DeiT-S at 1.9x landed under the
#                                                 # GPU default runtime; DeiT-S and DeiT-T training rates
#                                                 # from the 500x375 JPEG folder
#     CALL=2 bash benchmarks/gpu_session.sh       # call 2 (230 s), only if the lease has time left: DeiT-B at
#                                                 # 1.9x, the compile and TensorRT rows, eager vs compiled accuracy
#     DEVICE=cpu QUICK=1 bash benchmarks/gpu_session.sh; DEVICE=cpu QUICK=1 CALL=2 bash benchmarks/gpu_session.sh
#                                                 # the same on a CPU at the smallest settings (try it first)
#
# PARTS overrides the call's parts ("tests speed training", "speed-b cross accuracy", plus "cli" and
# "step"). TensorRT: where torch-tensorrt is not installed the cross row says so in one line.
#
# tests: the GPU-only tests (skipped on a CPU); speed: landing under the GPU default runtime (CUDA
# graphs) at batch 256 in bf16, the original's own images/s beside timm's published ones; training:
# the step alone, the loop from pre-made tensors and from JPEGs (workers or GPU decode); speed-b:
# DeiT-B at 1.9x; cross: a landed DeiT-S measured under compile and TensorRT; accuracy: the quick
# start's short run eager and compiled on one seed and plan, eager on another seed as the noise;
# cli: compress, eval and export end to end; step: the step by batch size.
set -uo pipefail
out=${OUT:-gpu-out}
device=${DEVICE:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case "${CALL:-1}" in
    1) default_parts="tests speed training" ;;
    2) default_parts="speed-b cross accuracy" ;;
    *) echo "CALL must be 1 or 2" >&2; exit 2 ;;
esac
parts=" ${PARTS:-$default_parts} "
part() {  # part NAME SECONDS COMMAND...: run under a limit, log to $out/NAME.log, say how it ended
    local name=$1 limit=$(( $2 * ${LIMIT_SCALE:-1} ))
    shift 2
    [[ "$parts" == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if [ -n "${QUICK:-}" ]; then  # the smallest settings: does every command run? (a CPU needs longer limits)
    LIMIT_SCALE=${LIMIT_SCALE:-4}
    images=16 steps=2 bench=8 train=(--images 8 --batch-size 4 --steps 3 --warmup 1 --bench-batch-size 8)
    speed=(--cases deit_tiny:1.5 --bench-batch-size 8) speed_b=(--cases deit_tiny:1.9 --bench-batch-size 8)
    cross=(--cases deit_tiny:1.5 --bench-batch-size 8 --cross compile)
    step=(--batches 2) accuracy=(--calib-steps 2 --finetune-steps 2)
else
    images=512 steps=20 bench=256 train=(--images 2048 --steps 30 --warmup 5)
    speed=(--cases deit_tiny:1.7 deit_small:1.9) speed_b=(--cases deit_base:1.9)
    cross=(--cases deit_small:1.9 --cross compile tensorrt)
    step=(--batches 128 256) accuracy=()
fi

python3 -c "from benchmarks.input_speed import make_jpeg_folder; make_jpeg_folder(__import__('pathlib').Path('$work/jpegs'), $images)"
# call 1, in this order
part tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_eval.py \
    tests/test_runtimes.py tests/test_compiled_step.py tests/test_device_decode.py  # GPU-only tests run there
part speed 150 python3 -m benchmarks.gpu --device "$device" --parts speed "${speed[@]}" --cross --out "$out/gpu_speed.md"
part training 170 python3 -m benchmarks.gpu --device "$device" --models deit_small deit_tiny --parts training \
    "${train[@]}" --out "$out/gpu_training.md"
# call 2
part speed-b 80 python3 -m benchmarks.gpu --device "$device" --parts speed "${speed_b[@]}" --cross \
    --out "$out/gpu_speed_b.md"
part cross 70 python3 -m benchmarks.gpu --device "$device" --parts speed "${cross[@]}" --out "$out/gpu_cross.md"
part accuracy 80 python3 -m benchmarks.compile_accuracy --device "$device" "${accuracy[@]}" \
    --out "$out/compile_accuracy.md"
# on request (PARTS)
cli=(--weights random --data "$work/jpegs" --calib-steps "$steps" --finetune-steps "$steps" --batch-size 16
     --bench-batch-size "$bench" --target-speedup 1.7 --device "$device")
# compress exits 3 when it writes a checkpoint that misses the target, so eval and export run on what it wrote
part cli 150 bash -c "
    python3 -m cait_cli compress deit_tiny ${cli[*]} --out $work/tiny.cait; echo compress exit \$?;
    test -d $work/tiny.cait &&
    python3 -m cait_cli eval $work/tiny.cait --data $work/jpegs/train --device $device --batch-size $bench &&
    python3 -m cait_cli export $work/tiny.cait --out $work/tiny.onnx"
part step 60 python3 -m benchmarks.profile_step --device "$device" --models deit_tiny --sweep "${step[@]}"
