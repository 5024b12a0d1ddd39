// JS value <-> IValue conversion, driven by the operator schema so that one generic call covers every ATen op.
#include "common.h"

namespace hemato {
namespace {

[[noreturn]] void Fail(Napi::Env env, const std::string& name, const std::string& expected) {
  throw Napi::TypeError::New(env, "argument '" + name + "' must be " + expected);
}

int64_t ToInt(Napi::Env env, const Napi::Value& v, const std::string& name) {
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? 1 : 0;
  if (!v.IsNumber()) Fail(env, name, "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d))) Fail(env, name, "an integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

double ToDouble(Napi::Env env, const Napi::Value& v, const std::string& name) {
  if (!v.IsNumber()) Fail(env, name, "a number");
  return v.As<Napi::Number>().DoubleValue();
}

Napi::Array ToArray(Napi::Env env, const Napi::Value& v, const std::string& name) {
  if (!v.IsArray()) Fail(env, name, "an array");
  return v.As<Napi::Array>();
}

// Tensor[] and Tensor?[] arrive as a Float64Array of handles (NaN: none), or as an empty or all-none plain array.
c10::IValue ToTensorList(Napi::Env env, const c10::TypePtr& elem, const Napi::Value& value, const std::string& name) {
  const bool optional = elem->kind() == c10::TypeKind::OptionalType;
  std::vector<double> handles;
  if (value.IsTypedArray() && value.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    Napi::Float64Array array = value.As<Napi::Float64Array>();
    handles.assign(array.Data(), array.Data() + array.ElementLength());
  } else {
    Napi::Array array = ToArray(env, value, name);
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Napi::Value item = array.Get(i);
      if (!optional || !(item.IsUndefined() || item.IsNull())) Fail(env, name, "a list of tensors");
      handles.push_back(std::nan(""));
    }
  }
  auto unwrap = [&](double handle) -> const at::Tensor& {
    return UnwrapTensor(env, handle, name.c_str());
  };
  if (!optional) {
    c10::List<at::Tensor> list;
    for (double handle : handles) list.push_back(unwrap(handle));
    return list;
  }
  // Tensor?[] is how ATen spells advanced indices.
  c10::List<c10::optional<at::Tensor>> list;
  for (double handle : handles) {
    if (std::isnan(handle)) list.push_back(c10::nullopt);
    else list.push_back(unwrap(handle));
  }
  return list;
}

c10::IValue ToList(Napi::Env env, const c10::TypePtr& elem, const Napi::Value& value, const std::string& name) {
  const bool ofTensors = elem->kind() == c10::TypeKind::TensorType ||
                         (elem->kind() == c10::TypeKind::OptionalType &&
                          elem->expectRef<c10::OptionalType>().getElementType()->kind() == c10::TypeKind::TensorType);
  if (ofTensors) return ToTensorList(env, elem, value, name);
  Napi::Array array = ToArray(env, value, name);
  uint32_t n = array.Length();
  switch (elem->kind()) {
    case c10::TypeKind::IntType: {
      c10::List<int64_t> list;
      for (uint32_t i = 0; i < n; ++i) list.push_back(ToInt(env, array.Get(i), name));
      return list;
    }
    case c10::TypeKind::FloatType: {
      c10::List<double> list;
      for (uint32_t i = 0; i < n; ++i) list.push_back(ToDouble(env, array.Get(i), name));
      return list;
    }
    case c10::TypeKind::BoolType: {
      c10::List<bool> list;
      for (uint32_t i = 0; i < n; ++i) list.push_back(array.Get(i).ToBoolean().Value());
      return list;
    }
    default:
      throw Napi::TypeError::New(env, "argument '" + name + "' has unsupported list type " + elem->str());
  }
}

}  // namespace

c10::IValue ToIValue(Napi::Env env, const c10::TypePtr& type, const Napi::Value& value, const std::string& name, bool isTensor) {
  if (type->kind() == c10::TypeKind::OptionalType) {
    if (value.IsUndefined() || value.IsNull()) return c10::IValue();
    return ToIValue(env, type->expectRef<c10::OptionalType>().getElementType(), value, name, isTensor);
  }
  if (type->kind() == c10::TypeKind::TensorType) {
    if (!isTensor) Fail(env, name, "a tensor");
    return UnwrapTensor(value, name.c_str());
  }
  if (isTensor) Fail(env, name, type->kind() == c10::TypeKind::NumberType ? "a number, not a tensor" : type->str() + ", not a tensor");
  switch (type->kind()) {
    case c10::TypeKind::IntType:  // also ScalarType, Layout, MemoryFormat and (in 2.x) SymInt
      return ToInt(env, value, name);
    case c10::TypeKind::FloatType:
      return ToDouble(env, value, name);
    case c10::TypeKind::BoolType:
      if (!value.IsBoolean()) Fail(env, name, "a boolean");
      return value.As<Napi::Boolean>().Value();
    case c10::TypeKind::NumberType: {  // Scalar: integers stay integral so int tensors keep their dtype
      if (value.IsBoolean()) return value.As<Napi::Boolean>().Value();
      double d = ToDouble(env, value, name);
      bool integral = std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 9.007199254740992e15;
      return integral ? c10::IValue(static_cast<int64_t>(d)) : c10::IValue(d);
    }
    case c10::TypeKind::StringType:
      if (!value.IsString()) Fail(env, name, "a string");
      return value.As<Napi::String>().Utf8Value();
    case c10::TypeKind::DeviceObjType:
      if (!value.IsString()) Fail(env, name, "a device string such as 'cpu' or 'cuda:0'");
      return c10::Device(value.As<Napi::String>().Utf8Value());
    case c10::TypeKind::ListType:
      return ToList(env, type->expectRef<c10::ListType>().getElementType(), value, name);
    default:
      throw Napi::TypeError::New(env, "argument '" + name + "' has unsupported type " + type->str());
  }
}

Napi::Value FromIValue(Napi::Env env, const c10::IValue& value) {
  if (value.isTensor()) {
    const at::Tensor& t = value.toTensor();
    return t.defined() ? WrapTensor(env, t) : env.Undefined();
  }
  if (value.isNone()) return env.Undefined();
  if (value.isInt()) return Napi::Number::New(env, static_cast<double>(value.toInt()));
  if (value.isDouble()) return Napi::Number::New(env, value.toDouble());
  if (value.isBool()) return Napi::Boolean::New(env, value.toBool());
  if (value.isString()) return Napi::String::New(env, value.toStringRef());
  if (value.isTensorList()) {
    auto list = value.toTensorList();
    Napi::Array out = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) out.Set(i, FromIValue(env, list.get(i)));
    return out;
  }
  if (value.isTuple()) {
    const auto& elements = value.toTupleRef().elements();
    Napi::Array out = Napi::Array::New(env, elements.size());
    for (size_t i = 0; i < elements.size(); ++i) out.Set(i, FromIValue(env, elements[i]));
    return out;
  }
  if (value.isList()) {
    auto list = value.toListRef();
    Napi::Array out = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) out.Set(i, FromIValue(env, list[i]));
    return out;
  }
  throw Napi::TypeError::New(env, "unsupported return type " + value.tagKind());
}

}  // namespace hemato
