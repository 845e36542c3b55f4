// Adapts @jazzer.js/fuzzer 2.1.0's native addon to upstream libFuzzer (Debian's
// libclang-rt-14-dev, libclang_rt.fuzzer_no_main-x86_64.a) instead of Code Intelligence's LLVM
// fork, which its own build downloads from github.com. Compiled into the addon by
// scripts/install-jazzer.sh; see fuzz/README.md ("Jazzer.js").
//
// The fork adds three things the addon uses; everything else (FuzzerDriver, 8-bit counters,
// PC tables, strcmp/strstr hooks, const_cmp8) is upstream API.
//
//  1. __jazzer_set_death_callback: the fork's name for __sanitizer_set_death_callback, through
//     which libFuzzer hands over its death callback (dump the crashing input, print stats).
//  2. *_with_pc variants of two trace hooks, taking the comparison's id as the "PC". Upstream
//     takes the PC from the return address. The PC only feeds the value profile
//     (-use_value_profile=1), so a distinct return address per id class is made with a sled of
//     512 call sites (below); the comparison table that drives CMP mutations ignores the PC.
//  3. A "stop fuzzing" return value of the user callback (-2), which upstream ignores: see
//     JazzerUpstreamStop, called by the patched fuzzing_sync.cpp.

#include <cstdint>
#include <cstdlib>

#include <napi.h>

extern "C" {
void __jazzer_set_death_callback(void (*callback)());
void __sanitizer_cov_trace_const_cmp8(uint64_t arg1, uint64_t arg2);
void __sanitizer_cov_trace_pc_indir(uintptr_t callee);

// libFuzzer finds this weak symbol and registers its death callback through it.
void __sanitizer_set_death_callback(void (*callback)()) { __jazzer_set_death_callback(callback); }
}

// 512 call sites 15 bytes apart: entry i calls `hook` with the return address base + 15 i + 9.
// These are distinct modulo 512 (gcd(15, 512) = 1), which is all of the PC that the value
// profile keeps for comparisons (index PC * 128 + distance in a 2^16-bit map), and distinct
// modulo 4096 (the caller bits kept for indirect calls). The stack is kept 16-byte aligned.
#define JAZZER_SLED(name, hook)                                                                    \
  asm(".text\n.p2align 4\n.globl " #name "\n.hidden " #name "\n" #name ":\n"                       \
      ".rept 512\n"                                                                                \
      "sub $8, %rsp\n"                                                                             \
      "call " #hook "@PLT\n"                                                                       \
      "add $8, %rsp\n"                                                                             \
      "ret\n"                                                                                      \
      "nop\n"                                                                                      \
      ".endr\n");

#if defined(__x86_64__) && defined(__linux__)
JAZZER_SLED(jazzer_cmp8_sled, __sanitizer_cov_trace_const_cmp8)
JAZZER_SLED(jazzer_indir_sled, __sanitizer_cov_trace_pc_indir)
extern "C" char jazzer_cmp8_sled[];
extern "C" char jazzer_indir_sled[];

extern "C" void __sanitizer_cov_trace_const_cmp8_with_pc(uintptr_t pc, uint64_t arg1, uint64_t arg2) {
  reinterpret_cast<void (*)(uint64_t, uint64_t)>(jazzer_cmp8_sled + 15 * (pc % 512))(arg1, arg2);
}
extern "C" void __sanitizer_cov_trace_pc_indir_with_pc(void *caller_pc, uintptr_t callee) {
  const uintptr_t pc = reinterpret_cast<uintptr_t>(caller_pc);
  reinterpret_cast<void (*)(uintptr_t)>(jazzer_indir_sled + 15 * (pc % 512))(callee);
}
#else
// Elsewhere one call site: value profile features of all comparisons share one PC.
extern "C" void __sanitizer_cov_trace_const_cmp8_with_pc(uintptr_t, uint64_t arg1, uint64_t arg2) {
  __sanitizer_cov_trace_const_cmp8(arg1, arg2);
}
extern "C" void __sanitizer_cov_trace_pc_indir_with_pc(void *, uintptr_t callee) {
  __sanitizer_cov_trace_pc_indir(callee);
}
#endif

// The fork's libFuzzer leaves its loop when the callback returns -2; upstream ignores the value
// and would keep fuzzing. By then the JS side has printed the finding and dumped the input
// (crash-<sha1>), so exit here with the finding's code: `exitCode` of a signal finding (0 for
// SIGINT, 128 + n), else libFuzzer's 77.
[[noreturn]] void JazzerUpstreamStop(const Napi::Value &error) {
  int code = 77;
  if (error.IsObject()) {
    Napi::Value c = error.As<Napi::Object>().Get("exitCode");
    if (c.IsNumber()) code = c.As<Napi::Number>().Int32Value();
  }
  std::_Exit(code);
}
