// Shared declarations of the hemato addon: tensor handles, the per-environment state and error translation.
#pragma once

#include <napi.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <memory>
#include <string>

namespace hemato {

// Per-environment state: one per Node isolate, so the addon is safe in worker threads.
struct AddonState {
  // Shared with tensor finalizers, which may run while the environment is being torn down.
  std::shared_ptr<int64_t> liveTensors = std::make_shared<int64_t>(0);
};

AddonState& State(Napi::Env env);

// A tensor handle is a type-tagged napi External over a heap at::Tensor. An undefined tensor inside
// means the handle was disposed; the finalizer is the garbage collector's safety net.
Napi::Value WrapTensor(Napi::Env env, at::Tensor tensor);
at::Tensor& UnwrapTensor(const Napi::Value& value, const char* what = "tensor");
bool IsTensorHandle(const Napi::Value& value);

// Runs `body` and turns every C++ exception into a JS Error whose message says what libtorch said.
template <typename Body>
Napi::Value Guard(const Napi::CallbackInfo& info, Body body) {
  Napi::Env env = info.Env();
  try {
    return body(env);
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Napi::Error::New(env, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  } catch (...) {
    throw Napi::Error::New(env, "unknown native error");
  }
}

// Conversions between JS values and TorchScript IValues, guided by an operator schema's argument types.
c10::IValue ToIValue(Napi::Env env, const c10::TypePtr& type, const Napi::Value& value, const std::string& name);
Napi::Value FromIValue(Napi::Env env, const c10::IValue& value);

// Method tables for each source file.
void InitTensorOps(Napi::Env env, Napi::Object exports);
void InitRuntime(Napi::Env env, Napi::Object exports);
#ifdef HEMATO_WITH_C10D
void InitDistributed(Napi::Env env, Napi::Object exports);
#endif
// Set by the build from native/locate-libtorch.mjs's check; these defaults serve a build that skipped it.
#ifndef HEMATO_C10D_UNAVAILABLE
#define HEMATO_C10D_UNAVAILABLE "this build of the addon did not check for c10d (native/locate-libtorch.mjs does)"
#endif
#ifndef HEMATO_NCCL_REASON
#define HEMATO_NCCL_REASON "hemato binds only Gloo so far"
#endif

}  // namespace hemato
