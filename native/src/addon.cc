// Entry point of the hemato addon: per-environment state and runtime controls (threads, seeds, grad mode, autocast),
// and whether the distributed binding was built.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <dlfcn.h>
#include <cstdlib>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <torch/version.h>

// The device-generic allocator interface (c10::DeviceAllocator, PyTorch 2.9+) reads the CUDA caching allocator's
// figures without CUDA headers; older libtorch (Debian's 1.13) builds without them and reports none.
#if (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)) && \
    __has_include(<c10/core/CachingDeviceAllocator.h>)
#include <c10/core/CachingDeviceAllocator.h>
#define HEMATO_DEVICE_ALLOCATOR 1
#endif

#include "common.h"

namespace hemato {
namespace {

// libtorch 2.4 replaced the per-device autocast setters with device-typed ones; this is the only version split.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
// The dtype goes first: when libtorch rejects it, nothing has changed yet.
void SetAutocast(at::DeviceType device, bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(device, dtype);
  at::autocast::set_autocast_enabled(device, enabled);
}
bool AutocastEnabled(at::DeviceType device) { return at::autocast::is_autocast_enabled(device); }
at::ScalarType AutocastDtype(at::DeviceType device) { return at::autocast::get_autocast_dtype(device); }
#else
// The dtype goes first: when libtorch rejects it (1.13's CPU autocast takes only bf16), nothing has changed yet.
void SetAutocast(at::DeviceType device, bool enabled, at::ScalarType dtype) {
  if (device == at::kCPU) {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(enabled);
  } else {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(enabled);
  }
}
bool AutocastEnabled(at::DeviceType device) {
  return device == at::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
at::ScalarType AutocastDtype(at::DeviceType device) {
  return device == at::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
}
#endif

at::DeviceType DeviceTypeArg(const Napi::Value& v) {
  std::string name = v.As<Napi::String>().Utf8Value();
  if (name == "cpu") return at::kCPU;
  if (name == "cuda") return at::kCUDA;
  throw Napi::TypeError::New(v.Env(), "device type must be 'cpu' or 'cuda', got '" + name + "'");
}

Napi::Value LiveTensors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(State(info.Env()).tensors.live()));
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::set_num_threads(info[0].As<Napi::Number>().Int32Value());
    return env.Undefined();
  });
}

// Hands freed heap pages back to the system. glibc keeps what a thread frees in that thread's arena for reuse, so
// a long-running process whose threads take turns (a server's decoders and model) grows without leaking.
Napi::Value ReleaseFreeMemory(const Napi::CallbackInfo& info) {
#ifdef __GLIBC__
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), at::get_num_threads());
}

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    torch::manual_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
    return env.Undefined();
  });
}

// Grad mode is thread-local in libtorch; JS runs every op on its isolate's thread, so setting it here is enough.
Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  bool previous = at::GradMode::is_enabled();
  at::GradMode::set_enabled(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), previous);
}

Napi::Value IsGradEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), at::GradMode::is_enabled());
}

// setAutocast(deviceType, enabled, dtype) -> [previousEnabled, previousDtype]. Each enabling scope counts one
// nesting level, so that leaving the outermost one clears the cache of casted weights, as torch.autocast does.
Napi::Value SetAutocastJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::DeviceType device = DeviceTypeArg(info[0]);
    bool enabled = info[1].As<Napi::Boolean>().Value();
    at::ScalarType previousDtype = AutocastDtype(device);
    // A disabling scope keeps the dtype, so that it cannot fail on a dtype it does not use.
    auto dtype = enabled ? static_cast<at::ScalarType>(info[2].As<Napi::Number>().Int32Value()) : previousDtype;
    Napi::Array previous = Napi::Array::New(env, 2);
    previous.Set(0u, Napi::Boolean::New(env, AutocastEnabled(device)));
    previous.Set(1u, Napi::Number::New(env, static_cast<int>(previousDtype)));
    SetAutocast(device, enabled, dtype);  // throws before changing anything on a bad dtype
    if (enabled) at::autocast::increment_nesting();
    return previous;
  });
}

// restoreAutocast(deviceType, scopeEnabled, previousEnabled, previousDtype) closes a scope opened by setAutocast.
Napi::Value RestoreAutocast(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::DeviceType device = DeviceTypeArg(info[0]);
    bool scopeEnabled = info[1].As<Napi::Boolean>().Value();
    bool enabled = info[2].As<Napi::Boolean>().Value();
    auto dtype = static_cast<at::ScalarType>(info[3].As<Napi::Number>().Int32Value());
    if (scopeEnabled && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    SetAutocast(device, enabled, dtype);
    return env.Undefined();
  });
}

Napi::Value AutocastState(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::DeviceType device = DeviceTypeArg(info[0]);
    Napi::Array state = Napi::Array::New(env, 2);
    state.Set(0u, Napi::Boolean::New(env, AutocastEnabled(device)));
    state.Set(1u, Napi::Number::New(env, static_cast<int>(AutocastDtype(device))));
    return state;
  });
}

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    if (torch::cuda::is_available()) torch::cuda::synchronize();
    return env.Undefined();
  });
}

// cudaMemory(index) -> [allocated, reserved, peakAllocated] bytes of the CUDA caching allocator, zeros before the
// first CUDA allocation, or undefined where this build cannot read them (no CUDA, or libtorch older than 2.9).
Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
#ifdef HEMATO_DEVICE_ALLOCATOR
    auto index = static_cast<c10::DeviceIndex>(info[0].As<Napi::Number>().Int32Value());
    if (!torch::cuda::is_available() || index < 0 || index >= static_cast<c10::DeviceIndex>(torch::cuda::device_count()))
      return env.Undefined();
    // GetAllocator throws where no CUDA allocator is registered; the cast fails where it is no DeviceAllocator.
    c10::DeviceAllocator* allocator = nullptr;
    try {
      allocator = dynamic_cast<c10::DeviceAllocator*>(c10::GetAllocator(at::kCUDA));
    } catch (const c10::Error&) {
    }
    if (allocator == nullptr) return env.Undefined();
    Napi::Array out = Napi::Array::New(env, 3);
    if (!allocator->initialized()) {
      for (uint32_t i = 0; i < 3; ++i) out.Set(i, Napi::Number::New(env, 0));
      return out;
    }
    const auto stats = allocator->getDeviceStats(index);
    // Index 0 of each StatArray is the aggregate over the small and large pools.
    out.Set(0u, Napi::Number::New(env, static_cast<double>(stats.allocated_bytes[0].current)));
    out.Set(1u, Napi::Number::New(env, static_cast<double>(stats.reserved_bytes[0].current)));
    out.Set(2u, Napi::Number::New(env, static_cast<double>(stats.allocated_bytes[0].peak)));
    return out;
#else
    return env.Undefined();
#endif
  });
}

// The BLAS core OpenBLAS picked at load time: 'Prescott' on AMX CPUs it does not know.
std::string OpenblasCore() {
  using CoreName = char* (*)();
  auto fn = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return fn ? std::string(fn()) : std::string();
}

// How many threads OpenBLAS runs its matmuls on (one with its pthread build unless the user chose:
// HoldBlasToOneThread); -1 where OpenBLAS is not the BLAS loaded.
int OpenblasThreads() {
  using NumThreads = int (*)();
  auto fn = reinterpret_cast<NumThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return fn ? fn() : -1;
}

// Debian's libtorch does fp32 matmuls in OpenBLAS, whose pthread build keeps its own threads spinning after each
// call while libtorch's OpenMP threads want the same cores for the next op: fp32 passes then stall for tens of
// milliseconds at a time. With one BLAS thread they do not, and whole models run faster (docs/benchmarks.md). The
// OpenMP build shares libtorch's threads and is left alone, as is a user's OPENBLAS_NUM_THREADS.
void HoldBlasToOneThread() {
  if (std::getenv("OPENBLAS_NUM_THREADS")) return;
  using GetParallel = int (*)();
  using SetThreads = void (*)(int);
  auto parallel = reinterpret_cast<GetParallel>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  constexpr int kPthreads = 1;  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
  if (parallel && set && parallel() == kPthreads) set(1);
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    Napi::Object out = Napi::Object::New(env);
    out.Set("torchVersion", TORCH_VERSION);
    out.Set("cudaAvailable", torch::cuda::is_available());
    out.Set("cudaDeviceCount", static_cast<double>(torch::cuda::device_count()));
    out.Set("mkldnn", at::hasMKLDNN());
    out.Set("openblasCore", OpenblasCore());
    out.Set("openblasThreads", OpenblasThreads());
    out.Set("cxx11Abi", static_cast<bool>(_GLIBCXX_USE_CXX11_ABI));
#ifdef HEMATO_DEVICE_ALLOCATOR
    out.Set("cudaMemoryStats", true);
#else
    out.Set("cudaMemoryStats", false);
#endif
    out.Set("parallelInfo", at::get_parallel_info());
    out.Set("interopThreads", at::get_num_interop_threads());
    return out;
  });
}

#ifndef HEMATO_WITH_C10D
// Built without the distributed binding: the build's check says why (locate-libtorch.mjs, c10dSupport).
Napi::Value DistributedUnavailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("available", false);
  out.Set("reason", HEMATO_C10D_UNAVAILABLE);
  out.Set("backends", Napi::Array::New(env, 0));
  out.Set("nccl", false);
  out.Set("ncclReason", HEMATO_NCCL_REASON);
  return out;
}
#endif

}  // namespace

AddonState& State(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }

void InitRuntime(Napi::Env env, Napi::Object exports) {
  exports.Set("liveTensors", Napi::Function::New(env, LiveTensors));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads));
  exports.Set("releaseFreeMemory", Napi::Function::New(env, ReleaseFreeMemory));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled));
  exports.Set("setAutocast", Napi::Function::New(env, SetAutocastJs));
  exports.Set("restoreAutocast", Napi::Function::New(env, RestoreAutocast));
  exports.Set("autocastState", Napi::Function::New(env, AutocastState));
  exports.Set("cudaSynchronize", Napi::Function::New(env, CudaSynchronize));
  exports.Set("cudaMemory", Napi::Function::New(env, CudaMemory));
  exports.Set("info", Napi::Function::New(env, Info));
#ifdef HEMATO_WITH_C10D
  InitDistributed(env, exports);
#else
  exports.Set("distributedInfo", Napi::Function::New(env, DistributedUnavailable));
#endif
}

}  // namespace hemato

// Context-aware initialisation: every isolate (main thread or worker) gets its own state.
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  hemato::HoldBlasToOneThread();
  env.SetInstanceData(new hemato::AddonState(env));
  hemato::InitTensorOps(env, exports);
  hemato::InitRuntime(env, exports);
  return exports;
}

NODE_API_MODULE(hemato_native, Init)
