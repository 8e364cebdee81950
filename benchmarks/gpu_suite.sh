#!/usr/bin/env bash
# Pajama's GPU checks in one command of at most 10 minutes on one H100/H200 (issue 18):
#   1. Ray Train pretraining loop, ~1B preset, bf16, compiled tokens-to-loss graph: tokens/s and
#      MFU (6N) at micro-batch 14 against the bare loop (the same step without Ray), then 16 and 8;
#   2. the same loop with strategy fsdp (FSDP2 on the one GPU, bf16 parameters) at micro-batch 14;
#   3. the generation engine on the 160m shape: generated tokens/s at concurrency 1 and 16, and
#      time to first token.
# Each part prints its figures as soon as it has them and stops at its own time limit, so one
# slow part cannot take the others' figures with it. Logs go to $OUT (or /tmp/pajama-gpu).
#
# The lent device image has torch and transformers 5.x but no Ray, pydantic or jsonschema, and
# nothing can be fetched there: the missing packages travel in .whl/ (git-ignored), made here by
#   benchmarks/gpu_suite.sh --prepare
# (Ray's wheel is trimmed of its Java jars, RLlib, Ray LLM and the dashboard's web client and
# packed as .tar.xz to fit the 64 MiB a call carries; transformers 4.57.6 is our pin). Then:
#   device run: benchmarks/gpu_suite.sh        (carry: .whl)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=${WHEELS:-.whl}
PY_TAGS=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
CARRIED=(jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
         pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.8.0 typing-inspection==0.4.2
         transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.0)

if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  python3 -m pip download -q --no-deps "${PY_TAGS[@]}" -d "$WHEELS" "${CARRIED[@]}" ray==2.60.0
  unpacked=$(mktemp -d)
  unzip -q "$WHEELS"/ray-2.60.0-*.whl -d "$unpacked"
  rm -rf "$unpacked"/ray/{jars,rllib,llm,dashboard/client/build} "$WHEELS"/ray-2.60.0-*.whl
  tar -C "$unpacked" -cf - . | xz -T0 -6 > "$WHEELS/ray-2.60.0-cp312-trimmed.tar.xz"
  rm -rf "$unpacked"
  du -sh "$WHEELS"
  exit 0
fi

OUT=${OUT:-/tmp/pajama-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO/platform:/tmp/site" RAY_TRAIN_ENABLE_PRINT_PATCH=0
started=$SECONDS
if [ -d "$WHEELS" ]; then
  mkdir -p /tmp/site
  tar -xJf "$WHEELS"/ray-*.tar.xz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    2>&1 | grep -v "^WARNING: Target directory" || true
fi
python3 - <<'PY' || exit 1
import ray, torch, transformers, pydantic
import pajama.train.trainer, pajama.serve.engine  # everything the parts below import
print(f"python3: torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__} "
      f"({ray.__file__}), pydantic {pydantic.__version__}; "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
# Checkpoints of the 1B runs (12 GB each with the optimiser state) go to memory when it has room.
if [ "$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)" -gt 60 ] 2>/dev/null; then
  export TMPDIR=/dev/shm
fi
echo "set up in $((SECONDS - started)) s; TMPDIR=${TMPDIR:-/tmp}"

part() {  # part NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, keep Ray's and the progress bars' noise out
  local name=$1 limit=$2; shift 2
  local at=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "^(bare loop|strategy|ddp |fsdp |engine|batching|device |ray_mfu|bare_mfu|ratio_ray|final_checkpoint|ray_max_cuda|JSON)" "$OUT/$name.log"
  if [ $rc -ne 0 ]; then
    echo "-- $name exited with $rc; its log's end:"; tail -n 25 "$OUT/$name.log"
    # A part stopped at its limit leaves Ray's processes (holding the GPU) and its scratch behind.
    python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1
    rm -rf "${TMPDIR:-/tmp}"/pajama-throughput-* "${TMPDIR:-/tmp}"/pajama-engine-*
  fi
  echo "-- $name took $((SECONDS - at)) s"
}

# DEVICE=cpu PRESET=tiny ENGINE_PRESET=tiny STEPS=3 runs the same parts on a CPU (a dry run of this script).
bench=(python3 benchmarks/pretrain_throughput.py --device "${DEVICE:-cuda}" --preset "${PRESET:-1b}"
       --compile "${COMPILE:-on}" --activation-checkpointing off --warmup 4 --steps "${STEPS:-12}")
# One compile cache for every process, Ray's workers included (they inherit this environment).
export TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/pajama-inductor-cache"
# Most important first: the Ray loop against the bare loop at micro-batch 14 and FSDP beside it,
# then the engine (short), then the Ray loop alone at the other two sizes. Measured on an H200
# (2026-11-30, these parts split differently): setup 23 s; bare + DDP at 14: 228 s; FSDP at 14:
# 107 s; engine: 43 s; each other size: about 100 s (compiling ~45 s, the final 12 GB checkpoint
# with the HF export ~25 s).
part pretrain_14 "${LIMIT_14:-300}" "${bench[@]}" --micro-batch 14 --strategy ddp fsdp
part engine "${LIMIT_ENGINE:-45}" python3 benchmarks/engine_throughput.py --preset "${ENGINE_PRESET:-160m}" --concurrency 1 16
part pretrain_16_8 "${LIMIT_16_8:-225}" "${bench[@]}" --micro-batch 16 8 --bare-runs 0
echo "gpu suite: $((SECONDS - started)) s"
