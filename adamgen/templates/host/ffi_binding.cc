// The XLA FFI binding of every host kernel (after common/frame.h and common/ffi_frame.h, which
// toolchain.host_ffi_binding_source() puts first). Compiled once per compiler, flags and FFI
// headers and linked into each kernel's library, so no kernel compile instantiates ffi.h's
// templates. It decodes the call into a Frame and runs the library's own kernel.
namespace {

void schedule(void* pool, void (*task)(void*), void* arg) {
  static_cast<xla::ffi::ThreadPool*>(pool)->Schedule([task, arg] { task(arg); });
}

xla::ffi::Error impl(xla::ffi::ThreadPool pool, xla::ffi::AnyBuffer scalars, xla::ffi::AnyBuffer pertensor,
                     xla::ffi::RemainingArgs args, xla::ffi::RemainingRets rets) {
  adamgen_frame::FrameStorage storage;
  if (xla::ffi::Error err = adamgen_frame::to_frame(scalars, pertensor, args, rets, storage); err.failure())
    return err;
  storage.frame.pool = &pool;
  storage.frame.pool_threads = pool.num_threads();
  storage.frame.schedule = &schedule;
  return adamgen_frame::to_error(adamgen_kernel_execute(&storage.frame));
}

}  // namespace

#pragma GCC visibility push(hidden)
XLA_FFI_DEFINE_HANDLER_SYMBOL(adamgen_host_ffi_handler, impl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .RemainingRets());
#pragma GCC visibility pop
