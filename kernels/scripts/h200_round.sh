#!/bin/bash
# One H200 round (the `device` tool's `run`) for the mLSTM kernels: unpack, run the CUDA (and
# optionally Vulkan) tests, a profile, the bench. Set up here, where cargo is:
#   CARGO_TARGET_DIR=T cargo build --release -p xlstm-kernels --features cuda,wgpu --example mlstm_bench
#   CARGO_TARGET_DIR=T cargo test --release -p xlstm-kernels --features cuda,wgpu --test mlstm --no-run
#   mkdir -p .dev/mlstm; cp this script, T/release/examples/mlstm_bench and the printed test
#   binary (as mlstm_tests) into .dev/mlstm; xz -T2 the two binaries (the carry limit is 64 MiB);
#   for VULKAN=1 the loader .debs in .gl (README of the device tool / the brief).
# Then run `cd .dev/mlstm && BENCH=1 bash h200_round.sh` with carry [".dev/mlstm", ".gl"].
# env: TESTS (test filter; " " = none), CUDA_TESTS=0, VULKAN=1, PROFILE=1|2 (shape; the log comes
# back as $OUT/prof.txt.xz), BENCH=1, BENCH_BACKENDS (cuda, wgpu), CHUNKS (e.g. 64,128).
cd "$(dirname "$0")"
for f in *.xz; do xz -dkf "$f"; done
chmod +x mlstm_bench mlstm_tests
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
if [ "${VULKAN:-0}" = 1 ]; then
  for f in ../../.gl/*.deb; do dpkg -x $f /; done; ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
if [ "${TESTS:-}" != " " ]; then
  if [ "${CUDA_TESTS:-1}" = 1 ]; then
    echo "== CUDA tests"
    XLSTM_KERNEL_BACKENDS=cuda ./mlstm_tests ${TESTS:-} --test-threads=1 2>&1 | tail -25
  fi
  if [ "${VULKAN:-0}" = 1 ]; then
    echo "== Vulkan tests"
    XLSTM_KERNEL_BACKENDS=wgpu ./mlstm_tests ${TESTS:-} --test-threads=1 2>&1 | tail -25
  fi
fi
if [ "${PROFILE:-0}" != 0 ]; then
  echo "== profile shape $PROFILE"
  mkdir -p prof && cd prof
  printf '[profiling.logger]\nlevel = "basic"\nstdout = true\n' > cubecl.toml
  MLSTM_BENCH_BACKENDS=cuda MLSTM_BENCH_SHAPES=$PROFILE MLSTM_BENCH_CHUNKS=64 ../mlstm_bench > prof.txt 2>&1
  tail -5 prof.txt; wc -l prof.txt; xz -T4 prof.txt; cp prof.txt.xz "$OUT/"; cd ..
fi
if [ "${BENCH:-0}" = 1 ]; then
  echo "== bench"
  env MLSTM_BENCH_BACKENDS=${BENCH_BACKENDS:-cuda} ${CHUNKS:+MLSTM_BENCH_CHUNKS=$CHUNKS} ./mlstm_bench 2>&1 | tail -40
fi
