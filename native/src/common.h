// Shared declarations of the hemato addon: tensor handles, the per-environment state and error translation.
#pragma once

#include <napi.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <memory>
#include <string>
#include <vector>

namespace hemato {

// Every tensor JS holds lives in a slot of this table and is named by a number: the slot's index and its
// generation. Releasing a slot bumps its generation, so a stale number never reaches a reused slot; JS frees slots
// explicitly (dispose, scopes) and through a FinalizationRegistry for tensors it dropped. Plain numbers cost
// Node-API no per-handle finalizer, which dominated the cost of a small op when each tensor was an External.
class TensorTable {
 public:
  explicit TensorTable(napi_env env);
  // The number naming a new slot that holds `tensor`; throws std::length_error when the table is full.
  double Add(at::Tensor tensor);
  // The live tensor `id` names, or nullptr (a stale, released or made-up number, or one from another isolate).
  at::Tensor* Find(double id) {
    uint64_t index;
    uint32_t generation;
    if (!Decode(id, index, generation)) return nullptr;
    Slot* slot = At(index);
    return slot->generation == generation && slot->tensor.defined() ? &slot->tensor : nullptr;
  }
  // Whether `id` names a slot of this table that was released since; used only to word errors.
  bool WasReleased(double id) const;
  // Frees the slot if `id` still names it; a stale id is a no-op, so disposing twice is harmless.
  void Release(double id);
  int64_t live() const { return live_; }

 private:
  // An id is [table tag: 8 bits][generation: 21 bits][slot index: 24 bits], exact in a double. The tag keeps a
  // handle posted to another isolate from naming a tensor of that isolate's table.
  static constexpr int kIndexBits = 24;
  static constexpr int kGenerationBits = 21;
  static constexpr uint64_t kIndexMask = (uint64_t{1} << kIndexBits) - 1;
  static constexpr uint32_t kMaxGeneration = (uint32_t{1} << kGenerationBits) - 1;
  static constexpr int kChunkBits = 12;  // slots never move: references stay valid while the table grows
  struct Slot {
    at::Tensor tensor;
    uint32_t generation = 1;
    int64_t reported = 0;  // bytes told to V8 for this tensor
  };
  Slot* At(uint64_t index) const { return &chunks_[index >> kChunkBits][index & ((1u << kChunkBits) - 1)]; }
  bool Decode(double id, uint64_t& index, uint32_t& generation) const {
    if (!(id >= 0 && id < 0x1p53)) return false;  // also rejects NaN
    auto bits = static_cast<uint64_t>(id);
    if (static_cast<double>(bits) != id || (bits >> (kIndexBits + kGenerationBits)) != tag_) return false;
    index = bits & kIndexMask;
    generation = static_cast<uint32_t>(bits >> kIndexBits) & kMaxGeneration;
    return index < used_;
  }

  // V8 learns what live tensors hold, so that tensors JS dropped without dispose() raise the pressure for the
  // collection that frees them (a FinalizationRegistry only runs after a full one). Sent in steps of a MiB.
  void Report(int64_t bytes);

  napi_env env_;
  int64_t unreported_ = 0;
  uint64_t tag_;
  std::vector<std::unique_ptr<Slot[]>> chunks_;
  std::vector<uint32_t> free_;
  uint64_t used_ = 0;
  int64_t live_ = 0;
};

// Per-environment state: one per Node isolate, so the addon is safe in worker threads.
struct AddonState {
  explicit AddonState(napi_env env) : tensors(env) {}
  TensorTable tensors;
  std::vector<c10::OperatorHandle> ops;
};

AddonState& State(Napi::Env env);

// A tensor handle is a number from the environment's TensorTable.
Napi::Value WrapTensor(Napi::Env env, at::Tensor tensor);
// Throws a JS error unless `value` names a live tensor. The reference stays valid until that slot is released.
at::Tensor& UnwrapTensor(const Napi::Value& value, const char* what = "tensor");
at::Tensor& UnwrapTensor(Napi::Env env, double id, const char* what);

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
// `isTensor` says whether JS passed a tensor handle here (callOp's mask), so that a plain number is never taken
// for a tensor, nor a tensor for a number. Lists of tensors arrive as Float64Arrays of handles (NaN: none).
c10::IValue ToIValue(Napi::Env env, const c10::TypePtr& type, const Napi::Value& value, const std::string& name, bool isTensor);
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
