// Fill an adamgen_frame::Frame from the FFI's typed arguments, and turn a Status back into an
// xla::ffi::Error (the host binding and the CUDA handlers, which include ffi.h).
#ifndef ADAMGEN_FFI_FRAME_H_
#define ADAMGEN_FFI_FRAME_H_
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace adamgen_frame {

struct FrameStorage {
  std::vector<Buffer> args;
  std::vector<Buffer> rets;
  Frame frame{};
};

inline Buffer to_buffer(const xla::ffi::AnyBuffer& b) {
  return {b.untyped_data(), static_cast<std::int32_t>(b.element_type()),
          static_cast<std::int64_t>(b.element_count())};
}

inline xla::ffi::Error to_frame(const xla::ffi::AnyBuffer& scalars, const xla::ffi::AnyBuffer& pertensor,
                                const xla::ffi::RemainingArgs& args, const xla::ffi::RemainingRets& rets,
                                FrameStorage& out) {
  out.args.resize(args.size());
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto b = args.get<xla::ffi::AnyBuffer>(i);
    if (b.has_error()) return b.error();
    out.args[i] = to_buffer(*b);
  }
  out.rets.resize(rets.size());
  for (std::size_t i = 0; i < rets.size(); ++i) {
    auto b = rets.get<xla::ffi::AnyBuffer>(i);
    if (b.has_error()) return b.error();
    out.rets[i] = to_buffer(**b);
  }
  out.frame = Frame{to_buffer(scalars), to_buffer(pertensor), out.args.data(), out.args.size(),
                    out.rets.data(), out.rets.size(), nullptr, 0, nullptr};
  return xla::ffi::Error::Success();
}

inline xla::ffi::Error to_error(const Status& status) {
  if (status.code == XLA_FFI_Error_Code_OK) return xla::ffi::Error::Success();
  return xla::ffi::Error(static_cast<xla::ffi::ErrorCode>(status.code), status.message);
}

}  // namespace adamgen_frame

#endif  // ADAMGEN_FFI_FRAME_H_
