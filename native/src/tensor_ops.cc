// Tensor handles, the generic ATen operator call, host data transfer and autograd.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>

#include "common.h"

namespace hemato {
namespace {

// How JS should read each value an operator returns: 0 as is, 1 a tensor handle (or undefined), 2 a list of them.
int ReturnKind(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::TensorType) return 1;
  if (type->kind() == c10::TypeKind::OptionalType &&
      type->expectRef<c10::OptionalType>().getElementType()->kind() == c10::TypeKind::TensorType)
    return 1;
  if (type->kind() == c10::TypeKind::ListType &&
      type->expectRef<c10::ListType>().getElementType()->kind() == c10::TypeKind::TensorType)
    return 2;
  return 0;
}

// findOp(name, overload) -> [op id, ...return kinds], or undefined when this libtorch lacks the operator.
Napi::Value FindOp(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string overload = info[1].As<Napi::String>().Utf8Value();
    auto op = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!op.has_value()) return env.Undefined();
    auto& ops = State(env).ops;
    ops.push_back(*op);
    const auto& returns = op->schema().returns();
    Napi::Array out = Napi::Array::New(env, 1 + returns.size());
    out.Set(0u, Napi::Number::New(env, static_cast<double>(ops.size() - 1)));
    for (size_t i = 0; i < returns.size(); ++i) out.Set(1 + i, Napi::Number::New(env, ReturnKind(returns[i].type())));
    return out;
  });
}

// callOp(op, tensorMask, ...args) runs one ATen operator through the dispatcher, so autograd and autocast apply as
// in PyTorch. Bit i of tensorMask says that args[i] is a tensor handle rather than a number. The arguments come as
// the call's own, not in an array, and the stack is reused: a small op's cost is mostly this function's.
Napi::Value CallOp(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    AddonState& state = State(env);
    double opId = 0, maskValue = 0;
    if (napi_get_value_double(env, info[0], &opId) != napi_ok || !(opId >= 0 && opId < static_cast<double>(state.ops.size())) ||
        opId != static_cast<double>(static_cast<size_t>(opId)))
      throw Napi::TypeError::New(env, "callOp: first argument must be an operator id from findOp");
    if (napi_get_value_double(env, info[1], &maskValue) != napi_ok || !(maskValue >= 0 && maskValue < 0x1p53))
      throw Napi::TypeError::New(env, "callOp: the tensor mask must be a non-negative integer");
    const c10::OperatorHandle& op = state.ops[static_cast<size_t>(opId)];
    const uint64_t mask = static_cast<uint64_t>(maskValue);
    const auto& schema = op.schema();
    const auto& params = schema.arguments();
    const size_t given = info.Length() - 2;
    if (given > params.size())
      throw Napi::TypeError::New(env, schema.name() + " takes " + std::to_string(params.size()) + " arguments, got " +
                                          std::to_string(given));
    static thread_local torch::jit::Stack stack;
    struct Cleared {  // holds no tensor past this call, also when it throws
      ~Cleared() { stack.clear(); }
    } cleared;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& param = params[i];
      napi_value value = i < given ? static_cast<napi_value>(info[i + 2]) : nullptr;
      napi_valuetype type = napi_undefined;
      if (value != nullptr) napi_typeof(env, value, &type);
      if (type == napi_undefined && param.default_value().has_value()) {
        stack.push_back(*param.default_value());
      } else if (type == napi_undefined && param.type()->kind() != c10::TypeKind::OptionalType) {
        throw Napi::TypeError::New(env, schema.name() + ": missing argument '" + param.name() + "'");
      } else {
        stack.push_back(ToIValue(env, param.type(), Napi::Value(env, value != nullptr ? value : env.Undefined()), param.name(),
                                 i < 53 && ((mask >> i) & 1)));
      }
    }
    op.callBoxed(&stack);
    if (stack.size() == 1) return FromIValue(env, stack[0]);
    Napi::Array out = Napi::Array::New(env, stack.size());
    for (size_t i = 0; i < stack.size(); ++i) out.Set(i, FromIValue(env, stack[i]));
    return out;
  });
}

// fromBuffer(typedArray, shape, dtype) copies host data into a new CPU tensor.
Napi::Value FromBuffer(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    Napi::TypedArray array = info[0].As<Napi::TypedArray>();
    Napi::Array shapeJs = info[1].As<Napi::Array>();
    auto dtype = static_cast<at::ScalarType>(info[2].As<Napi::Number>().Int32Value());
    std::vector<int64_t> shape(shapeJs.Length());
    int64_t numel = 1;
    for (uint32_t i = 0; i < shapeJs.Length(); ++i) numel *= shape[i] = shapeJs.Get(i).As<Napi::Number>().Int64Value();
    size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
    if (bytes != array.ByteLength())
      throw Napi::RangeError::New(env, "fromBuffer: " + std::to_string(array.ByteLength()) + " bytes for a shape needing " +
                                           std::to_string(bytes));
    auto* data = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
    at::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    if (bytes > 0) std::memcpy(t.data_ptr(), data, bytes);
    return WrapTensor(env, std::move(t));
  });
}

// toBuffer(tensor) copies a tensor's elements, in row-major order, into a new ArrayBuffer.
Napi::Value ToBuffer(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::Tensor t = UnwrapTensor(info[0]).detach().to(at::kCPU).contiguous();
    size_t bytes = t.numel() * t.element_size();
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
    if (bytes > 0) std::memcpy(buffer.Data(), t.data_ptr(), bytes);
    return buffer;
  });
}

// dispose(tensor) frees the tensor's slot; a handle already freed, or not a number at all, is left alone, so that
// disposing twice and the garbage collector's late calls are harmless.
Napi::Value Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double id = 0;
  if (napi_get_value_double(env, info[0], &id) == napi_ok) State(env).tensors.Release(id);
  return env.Undefined();
}

// meta(tensor) -> [dtype code, device string, requiresGrad, ...shape]: one call instead of four.
Napi::Value Meta(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    const at::Tensor& t = UnwrapTensor(info[0]);
    auto sizes = t.sizes();
    Napi::Array out = Napi::Array::New(env, 3 + sizes.size());
    out.Set(0u, Napi::Number::New(env, static_cast<int>(t.scalar_type())));
    out.Set(1u, Napi::String::New(env, t.device().str()));
    out.Set(2u, Napi::Boolean::New(env, t.requires_grad()));
    for (size_t i = 0; i < sizes.size(); ++i) out.Set(3 + i, Napi::Number::New(env, static_cast<double>(sizes[i])));
    return out;
  });
}

// isContiguous(tensor, memoryFormat): is the tensor dense in that layout (0 row-major, 2 channels-last)?
Napi::Value IsContiguous(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    auto format = static_cast<at::MemoryFormat>(info[1].As<Napi::Number>().Int32Value());
    return Napi::Boolean::New(env, UnwrapTensor(info[0]).is_contiguous(format));
  });
}

Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    UnwrapTensor(info[0]).requires_grad_(info[1].As<Napi::Boolean>().Value());
    return env.Undefined();
  });
}

Napi::Value Grad(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    const at::Tensor& grad = UnwrapTensor(info[0]).grad();
    return grad.defined() ? WrapTensor(env, grad) : env.Undefined();
  });
}

// setGrad(tensor, grad | undefined): undefined clears the gradient, which is how optimizers zero it.
Napi::Value SetGrad(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::Tensor& t = UnwrapTensor(info[0]);
    if (info[1].IsUndefined()) {
      t.mutable_grad() = at::Tensor();
      return env.Undefined();
    }
    const at::Tensor& grad = UnwrapTensor(info[1], "grad");
    // libtorch's C++ setter checks nothing; a mismatched gradient would corrupt later accumulation and updates.
    // These are the checks of PyTorch's Python `.grad` setter.
    if (!grad.options().type_equal(t.options()) || grad.device() != t.device())
      throw Napi::TypeError::New(env, "setGrad: the gradient is " + std::string(c10::toString(grad.scalar_type())) + " on " +
                                          grad.device().str() + ", the tensor is " + c10::toString(t.scalar_type()) + " on " +
                                          t.device().str());
    if (!grad.sizes().equals(t.sizes()))
      throw Napi::RangeError::New(env, "setGrad: the gradient's shape " + c10::str(grad.sizes()) + " differs from the tensor's " +
                                           c10::str(t.sizes()));
    t.mutable_grad() = grad;
    return env.Undefined();
  });
}

// backward(tensor, grad | undefined, retainGraph)
Napi::Value Backward(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    at::Tensor& t = UnwrapTensor(info[0]);
    at::Tensor grad = info[1].IsUndefined() ? at::Tensor() : UnwrapTensor(info[1], "grad");
    bool retain = info[2].ToBoolean().Value();
    t.backward(grad, retain);
    return env.Undefined();
  });
}

// randomSeeded(kind, shape, dtype, seed): 'rand' or 'randn' from a private generator, leaving the global one alone.
Napi::Value RandomSeeded(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    std::string kind = info[0].As<Napi::String>().Utf8Value();
    Napi::Array shapeJs = info[1].As<Napi::Array>();
    std::vector<int64_t> shape(shapeJs.Length());
    for (uint32_t i = 0; i < shapeJs.Length(); ++i) shape[i] = shapeJs.Get(i).As<Napi::Number>().Int64Value();
    auto options = torch::TensorOptions().dtype(static_cast<at::ScalarType>(info[2].As<Napi::Number>().Int32Value()));
    auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value()));
    if (kind == "rand") return WrapTensor(env, at::rand(shape, generator, options));
    if (kind == "randn") return WrapTensor(env, at::randn(shape, generator, options));
    throw Napi::TypeError::New(env, "randomSeeded: kind must be 'rand' or 'randn'");
  });
}

}  // namespace

TensorTable::TensorTable(napi_env env) : env_(env) {
  static std::atomic<uint32_t> tables{0};
  tag_ = tables.fetch_add(1) % 255 + 1;
}

void TensorTable::Report(int64_t bytes) {
  unreported_ += bytes;
  if (unreported_ >= (1 << 20) || unreported_ <= -(1 << 20)) {
    int64_t total = 0;
    napi_adjust_external_memory(env_, unreported_, &total);
    unreported_ = 0;
  }
}

double TensorTable::Add(at::Tensor tensor) {
  uint64_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else {
    if (used_ > kIndexMask) throw std::length_error("too many live tensors (16,777,216): dispose the ones you no longer need");
    if ((used_ >> kChunkBits) == chunks_.size()) chunks_.push_back(std::make_unique<Slot[]>(size_t{1} << kChunkBits));
    index = used_++;
  }
  Slot* slot = At(index);
  // The tensor's own elements (a view counts them again), and about what a tensor costs besides: its TensorImpl
  // and storage here, its Tensor object, weak cell and handle in JS.
  slot->reported = 1024 + (tensor.has_storage() ? static_cast<int64_t>(tensor.numel()) * static_cast<int64_t>(tensor.element_size()) : 0);
  Report(slot->reported);
  slot->tensor = std::move(tensor);
  ++live_;
  return static_cast<double>((((tag_ << kGenerationBits) | slot->generation) << kIndexBits) | index);
}

bool TensorTable::WasReleased(double id) const {
  uint64_t index;
  uint32_t generation;
  return Decode(id, index, generation) && generation >= 1 && generation < At(index)->generation;
}

void TensorTable::Release(double id) {
  at::Tensor* tensor = Find(id);
  if (tensor == nullptr) return;
  uint64_t index = static_cast<uint64_t>(id) & kIndexMask;
  Slot* slot = At(index);
  at::Tensor freed = std::move(slot->tensor);  // destroyed after the slot is consistent again
  slot->tensor = at::Tensor();
  --live_;
  Report(-slot->reported);
  // A slot whose generation would overflow is retired rather than reused, so that no id ever names two tensors.
  if (++slot->generation <= kMaxGeneration) free_.push_back(static_cast<uint32_t>(index));
}

Napi::Value WrapTensor(Napi::Env env, at::Tensor tensor) {
  return Napi::Number::New(env, State(env).tensors.Add(std::move(tensor)));
}

at::Tensor& UnwrapTensor(Napi::Env env, double id, const char* what) {
  TensorTable& tensors = State(env).tensors;
  if (at::Tensor* t = tensors.Find(id)) return *t;
  if (tensors.WasReleased(id)) throw Napi::Error::New(env, std::string(what) + ": tensor was disposed");
  throw Napi::TypeError::New(env, std::string(what) + " must be a tensor");
}

at::Tensor& UnwrapTensor(const Napi::Value& value, const char* what) {
  Napi::Env env = value.Env();
  double id = -1;
  if (napi_get_value_double(env, value, &id) != napi_ok) throw Napi::TypeError::New(env, std::string(what) + " must be a tensor");
  return UnwrapTensor(env, id, what);
}

void InitTensorOps(Napi::Env env, Napi::Object exports) {
  exports.Set("findOp", Napi::Function::New(env, FindOp));
  exports.Set("callOp", Napi::Function::New(env, CallOp));
  exports.Set("fromBuffer", Napi::Function::New(env, FromBuffer));
  exports.Set("toBuffer", Napi::Function::New(env, ToBuffer));
  exports.Set("dispose", Napi::Function::New(env, Dispose));
  exports.Set("meta", Napi::Function::New(env, Meta));
  exports.Set("isContiguous", Napi::Function::New(env, IsContiguous));
  exports.Set("setRequiresGrad", Napi::Function::New(env, SetRequiresGrad));
  exports.Set("grad", Napi::Function::New(env, Grad));
  exports.Set("setGrad", Napi::Function::New(env, SetGrad));
  exports.Set("backward", Napi::Function::New(env, Backward));
  exports.Set("randomSeeded", Napi::Function::New(env, RandomSeeded));
}

}  // namespace hemato
