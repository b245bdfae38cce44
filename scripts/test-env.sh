# Sourced by scripts/test, scripts/check-floors and .ci/run: what makes the suite fast on a CPU.
#
# 1. jemalloc, told to keep the memory it frees, preloaded into every process.
# PyTorch on a CPU frees and maps its largest buffers again at every step (the embedded model's 262k-entry LM head
# makes logits of hundreds of MB); glibc hands each one back to the kernel, and the page faults that follow cost about
# a fifth of a training step on 2 cores. jemalloc reuses them: one short fine-tune took 52 s instead of 64 s, and the
# suite 970 s instead of 1133 s (bench/RESULTS.md, "CI"). A fine-tune's peak memory stayed the same; a test worker
# would keep the most any of its files needed, so tests/conftest.py hands the kept memory back after each file.
# Where the library is missing it is installed as root on Debian (libjemalloc2); elsewhere nothing changes and the
# suite runs the same, only slower. WRITEMYPAPER_JEMALLOC=0 turns it off.
_wmp_find_jemalloc() { ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 .*(x86-64|AArch64)/ {print $NF; exit}'; }
_wmp_jemalloc() {
  [ "${WRITEMYPAPER_JEMALLOC:-1}" = 0 ] && return 0
  case "${LD_PRELOAD:-}" in *libjemalloc*) return 0 ;; esac
  local lib
  lib=$(_wmp_find_jemalloc)
  if [ -z "$lib" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libjemalloc2 >/dev/null 2>&1; } || true
    lib=$(_wmp_find_jemalloc)
  fi
  if [ -z "$lib" ]; then
    echo "note: jemalloc not found (Debian: apt-get install libjemalloc2); the tests run slower without it" >&2
    return 0
  fi
  export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
  export MALLOC_CONF="${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}"
}
_wmp_jemalloc
unset -f _wmp_jemalloc _wmp_find_jemalloc

# 2. Each pytest-xdist worker gets its share of the cores for PyTorch's and llama.cpp's threads (OMP_NUM_THREADS caps
# both): two workers each spinning a thread per core fought over 2 cores, and the suite took 970 s instead of 778 s.
# WRITEMYPAPER_TEST_WORKERS is the number of workers (2 unless set; 0 runs the tests in one process).
WRITEMYPAPER_TEST_WORKERS=${WRITEMYPAPER_TEST_WORKERS:-2}
if [ "$WRITEMYPAPER_TEST_WORKERS" -gt 1 ] 2>/dev/null && [ -z "${OMP_NUM_THREADS:-}" ]; then
  _wmp_cores=$(nproc 2>/dev/null || echo 1)  # the cores this process may use (its affinity), not the machine's
  export OMP_NUM_THREADS=$(( _wmp_cores / WRITEMYPAPER_TEST_WORKERS > 0 ? _wmp_cores / WRITEMYPAPER_TEST_WORKERS : 1 ))
  unset _wmp_cores
fi
