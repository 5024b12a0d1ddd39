// Tensor handles, the generic ATen operator call, host data transfer and autograd.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "common.h"

namespace hemato {
namespace {

const napi_type_tag kTensorTag = {0x6865'6d61'746f'5465ULL, 0x6e73'6f72'4861'6e64ULL};
const napi_type_tag kOpTag = {0x6865'6d61'746f'4f70ULL, 0x4861'6e64'6c65'0001ULL};

struct OpEntry {
  c10::OperatorHandle handle;
};

// findOp(name, overload) -> an operator handle, or undefined when this libtorch lacks the operator.
Napi::Value FindOp(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string overload = info[1].As<Napi::String>().Utf8Value();
    auto op = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!op.has_value()) return env.Undefined();
    auto external = Napi::External<OpEntry>::New(env, new OpEntry{*op}, [](Napi::Env, OpEntry* e) { delete e; });
    external.TypeTag(&kOpTag);
    return external;
  });
}

// callOp(op, args[]) runs one ATen operator through the dispatcher, so autograd and autocast apply as in PyTorch.
Napi::Value CallOp(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    if (!info[0].IsExternal() || !info[0].As<Napi::Object>().CheckTypeTag(&kOpTag))
      throw Napi::TypeError::New(env, "callOp: first argument must be an operator handle");
    const c10::OperatorHandle& op = info[0].As<Napi::External<OpEntry>>().Data()->handle;
    Napi::Array args = info[1].As<Napi::Array>();
    const auto& schema = op.schema();
    const auto& params = schema.arguments();
    if (args.Length() > params.size())
      throw Napi::TypeError::New(env, schema.name() + " takes " + std::to_string(params.size()) + " arguments, got " +
                                          std::to_string(args.Length()));
    torch::jit::Stack stack;
    stack.reserve(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& param = params[i];
      Napi::Value value = i < args.Length() ? args.Get(i) : env.Undefined();
      if (value.IsUndefined() && param.default_value().has_value()) {
        stack.push_back(*param.default_value());
      } else if (value.IsUndefined() && param.type()->kind() != c10::TypeKind::OptionalType) {
        throw Napi::TypeError::New(env, schema.name() + ": missing argument '" + param.name() + "'");
      } else {
        stack.push_back(ToIValue(env, param.type(), value, param.name()));
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

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    if (!IsTensorHandle(info[0])) throw Napi::TypeError::New(env, "dispose: not a tensor handle");
    at::Tensor* t = info[0].As<Napi::External<at::Tensor>>().Data();
    if (t->defined()) {
      *t = at::Tensor();
      --*State(env).liveTensors;
    }
    return env.Undefined();
  });
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

Napi::Value WrapTensor(Napi::Env env, at::Tensor tensor) {
  std::shared_ptr<int64_t> live = State(env).liveTensors;
  ++*live;
  auto external = Napi::External<at::Tensor>::New(env, new at::Tensor(std::move(tensor)),
                                                  [live](Napi::Env, at::Tensor* t) {
                                                    if (t->defined()) --*live;
                                                    delete t;
                                                  });
  external.TypeTag(&kTensorTag);
  return external;
}

bool IsTensorHandle(const Napi::Value& value) {
  return value.IsExternal() && value.As<Napi::Object>().CheckTypeTag(&kTensorTag);
}

at::Tensor& UnwrapTensor(const Napi::Value& value, const char* what) {
  if (!IsTensorHandle(value)) throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a tensor");
  at::Tensor* t = value.As<Napi::External<at::Tensor>>().Data();
  if (!t->defined()) throw Napi::Error::New(value.Env(), std::string(what) + ": tensor was disposed");
  return *t;
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
