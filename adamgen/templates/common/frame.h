// The XLA FFI call as plain data. The host binding (host/ffi_binding.cc: compiled once per
// compiler, flags and FFI headers, and linked into every host kernel) and the CUDA handlers fill
// it from the FFI's typed buffers; the kernels' collect() reads it. A host kernel's own source
// therefore needs only the FFI's C header: ffi.h's templates were most of its compile time.
#ifndef ADAMGEN_FRAME_H_
#define ADAMGEN_FRAME_H_
#include <cstddef>
#include <cstdint>

#include "xla/ffi/api/c_api.h"

namespace adamgen_frame {

struct Buffer {
  void* data;
  std::int32_t dtype;  // an XLA_FFI_DataType value
  std::int64_t count;  // elements
};

struct Frame {
  Buffer scalars;
  Buffer pertensor;
  const Buffer* args;  // the remaining arguments: per-tensor inputs, then packed inputs
  std::size_t n_args;
  const Buffer* rets;  // every result
  std::size_t n_rets;
  // host: XLA's intra-op thread pool, its size, and how to hand it a task (null on CUDA)
  void* pool;
  std::int64_t pool_threads;
  void (*schedule)(void* pool, void (*task)(void*), void* arg);
};

// code: an XLA_FFI_Error_Code (0: success); message: a string literal (static storage)
struct Status {
  std::int32_t code;
  const char* message;
};

inline Status ok() { return {XLA_FFI_Error_Code_OK, nullptr}; }
inline Status invalid(const char* message) { return {XLA_FFI_Error_Code_INVALID_ARGUMENT, message}; }

}  // namespace adamgen_frame

// Host kernels: each library holds one kernel (its source defines adamgen_kernel_execute) and
// the binding (which defines adamgen_host_ffi_handler); both stay inside the library.
extern "C" __attribute__((visibility("hidden"))) adamgen_frame::Status adamgen_kernel_execute(
    const adamgen_frame::Frame* frame);
extern "C" __attribute__((visibility("hidden"))) XLA_FFI_Error* adamgen_host_ffi_handler(XLA_FFI_CallFrame* call);

#endif  // ADAMGEN_FRAME_H_
