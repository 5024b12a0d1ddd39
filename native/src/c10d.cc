// Distributed collectives over PyTorch's c10d: a TCP or file store, a Gloo process group, and the collectives
// data-parallel training needs. Built only where locate-libtorch.mjs finds c10d's and Gloo's headers in an API this
// file knows (HEMATO_WITH_C10D). Collectives start on the JS thread, so every rank issues them in program order;
// waiting (for a rendezvous or a collective) runs on a libuv worker and settles a promise, so a dead or silent peer
// rejects it within the group's time-out instead of blocking the event loop.
// Without HEMATO_WITH_C10D this file compiles to nothing, so a build that compiles every source stays whole.
#ifdef HEMATO_WITH_C10D
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <functional>

#include "common.h"

namespace hemato {
namespace {

using Milliseconds = std::chrono::milliseconds;

const napi_type_tag kStoreTag = {0x6865'6d61'746f'5374ULL, 0x6f72'6548'616e'646cULL};
const napi_type_tag kGroupTag = {0x6865'6d61'746f'4772ULL, 0x6f75'7048'616e'646cULL};

struct StoreEntry {
  c10::intrusive_ptr<c10d::Store> store;
  // Each process group made on this store gets its own key prefix, so that a later group's rendezvous cannot read an
  // earlier one's keys. Ranks make their groups in the same order, so they agree on the prefix.
  int64_t groups = 0;
};

struct GroupEntry {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  c10::intrusive_ptr<c10d::Store> store;  // the group's own prefix of the store, for leaving it
  Milliseconds timeout;
  int rank;
  int size;
};

template <typename T>
T& Unwrap(const Napi::Value& value, const napi_type_tag* tag, const char* what) {
  if (!value.IsExternal() || !value.As<Napi::Object>().CheckTypeTag(tag))
    throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a handle from this addon");
  return *value.As<Napi::External<T>>().Data();
}

GroupEntry& LiveGroup(const Napi::Value& value) {
  GroupEntry& entry = Unwrap<GroupEntry>(value, &kGroupTag, "group");
  if (!entry.group) throw Napi::Error::New(value.Env(), "the process group was destroyed");
  return entry;
}

int IntArg(const Napi::Value& value, const char* what, int low, int high) {
  if (!value.IsNumber()) throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a number");
  double d = value.As<Napi::Number>().DoubleValue();
  if (!(d >= low && d <= high) || d != static_cast<double>(static_cast<int64_t>(d)))
    throw Napi::RangeError::New(value.Env(), std::string(what) + " must be an integer in " + std::to_string(low) + ".." + std::to_string(high));
  return static_cast<int>(d);
}

Milliseconds TimeoutArg(const Napi::Value& value) {
  return Milliseconds(IntArg(value, "timeoutMs", 1, 24 * 3600 * 1000));
}

// The dtypes Gloo reduces on the CPU. bfloat16 is left to Gloo itself, which says plainly when it lacks it.
bool GlooDtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kChar:
    case at::kByte:
    case at::kInt:
    case at::kLong:
      return true;
    default:
      return false;
  }
}

// Gloo reads and writes a tensor's memory directly: it must be a dense, contiguous CPU tensor of a type it knows.
at::Tensor CollectiveTensor(const Napi::Value& value, const char* what) {
  Napi::Env env = value.Env();
  const at::Tensor& t = UnwrapTensor(value, what);
  if (!t.device().is_cpu())
    throw Napi::TypeError::New(env, std::string(what) + " must be on the CPU for Gloo, got one on " + t.device().str());
  if (t.layout() != at::kStrided) throw Napi::TypeError::New(env, std::string(what) + " must be a dense tensor");
  if (!t.is_contiguous()) throw Napi::TypeError::New(env, std::string(what) + " must be contiguous (call .contiguous() first)");
  if (!GlooDtype(t.scalar_type()))
    throw Napi::TypeError::New(env, std::string(what) + ": Gloo cannot carry " + c10::toString(t.scalar_type()) + " tensors");
  return t;
}

std::vector<at::Tensor> TensorList(const Napi::Value& value, const char* what) {
  if (!value.IsArray()) throw Napi::TypeError::New(value.Env(), std::string(what) + " must be an array of tensors");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<at::Tensor> out;
  out.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) out.push_back(CollectiveTensor(array.Get(i), what));
  return out;
}

// Runs `body` on a libuv worker thread and settles a promise on the JS thread: with what `result` makes, or with an
// Error carrying libtorch's message.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, std::function<void()> body, std::function<Napi::Value(Napi::Env)> result)
      : Napi::AsyncWorker(env, "hemato:c10d"), deferred_(Napi::Promise::Deferred::New(env)), body_(std::move(body)), result_(std::move(result)) {}

  static Napi::Promise Start(Napi::Env env, std::function<void()> body, std::function<Napi::Value(Napi::Env)> result) {
    auto* worker = new PromiseWorker(env, std::move(body), std::move(result));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();  // the worker deletes itself once settled
    return promise;
  }

 protected:
  void Execute() override {
    try {
      body_();
    } catch (const c10::Error& e) {
      SetError(e.what_without_backtrace());
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("unknown native error");
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(result_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> body_;
  std::function<Napi::Value(Napi::Env)> result_;
};

Napi::Value WrapStore(Napi::Env env, c10::intrusive_ptr<c10d::Store> store) {
  auto external = Napi::External<StoreEntry>::New(env, new StoreEntry{std::move(store)}, [](Napi::Env, StoreEntry* e) { delete e; });
  external.TypeTag(&kStoreTag);
  return external;
}

// createTcpStore(host, port, isServer, worldSize, timeoutMs) -> Promise<[store, port]>. The server binds `port` (0
// picks a free one, reported back); every rank, the server's included, then connects as a client, retrying until the
// time-out.
Napi::Value CreateTcpStore(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "host must be a string");
    std::string host = info[0].As<Napi::String>().Utf8Value();
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(IntArg(info[1], "port", 0, 65535));
    options.isServer = info[2].ToBoolean().Value();
    options.numWorkers = static_cast<std::size_t>(IntArg(info[3], "worldSize", 1, 1 << 20));
    // The process group's rendezvous waits for every rank anyway, with its own time-out.
    options.waitWorkers = false;
    options.timeout = TimeoutArg(info[4]);
    auto made = std::make_shared<c10::intrusive_ptr<c10d::TCPStore>>();
    return PromiseWorker::Start(
        env, [host, options, made] { *made = c10::make_intrusive<c10d::TCPStore>(host, options); },
        [made](Napi::Env env) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, 2);
          out.Set(0u, Napi::Number::New(env, (*made)->getPort()));
          out.Set(1u, WrapStore(env, *made));
          return out;
        });
  });
}

// createFileStore(path, worldSize, timeoutMs) -> store. The last rank to let go of the store deletes its file.
Napi::Value CreateFileStore(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
    auto store = c10::make_intrusive<c10d::FileStore>(info[0].As<Napi::String>().Utf8Value(), IntArg(info[1], "worldSize", 1, 1 << 20));
    store->setTimeout(TimeoutArg(info[2]));
    return WrapStore(env, store);
  });
}

// closeStore(store): lets go of this handle's store; a process group made on it keeps it until destroyed.
Napi::Value CloseStore(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    Unwrap<StoreEntry>(info[0], &kStoreTag, "store").store.reset();
    return env.Undefined();
  });
}

// initGloo(store, rank, worldSize, timeoutMs, interfaces, hostname) -> Promise<group>. The rendezvous waits for every
// rank to reach it (up to the time-out); the group then holds a full mesh of TCP connections through Gloo devices
// bound to `interfaces` (comma-separated) or `hostname` when given, else to the address this machine's hostname
// resolves to.
Napi::Value InitGloo(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    StoreEntry& storeEntry = Unwrap<StoreEntry>(info[0], &kStoreTag, "store");
    if (!storeEntry.store) throw Napi::Error::New(env, "the store was closed");
    int size = IntArg(info[2], "worldSize", 1, 1 << 20);
    int rank = IntArg(info[1], "rank", 0, size - 1);
    Milliseconds timeout = TimeoutArg(info[3]);
    std::string interface = info[4].IsString() ? info[4].As<Napi::String>().Utf8Value() : "";
    std::string hostname = info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "";
    auto store = c10::make_intrusive<c10d::PrefixStore>("hemato/" + std::to_string(storeEntry.groups++), storeEntry.store);
    auto made = std::make_shared<c10::intrusive_ptr<c10d::ProcessGroupGloo>>();
    return PromiseWorker::Start(
        env,
        [store, rank, size, timeout, interface, hostname, made] {
          // Gloo's rendezvous waits on the store with the store's own time-out.
          store->setTimeout(timeout);
          auto options = c10d::ProcessGroupGloo::Options::create(timeout);
          // One device per interface of a comma-separated list, as PyTorch reads GLOO_SOCKET_IFNAME.
          for (size_t start = 0; start < interface.size();) {
            size_t end = std::min(interface.find(',', start), interface.size());
            if (end > start) options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface.substr(start, end - start)));
            start = end + 1;
          }
          if (options->devices.empty()) {
            options->devices.push_back(!hostname.empty() ? c10d::ProcessGroupGloo::createDeviceForHostname(hostname)
                                                         : c10d::ProcessGroupGloo::createDefaultDevice());
          }
          options->threads = 2 * static_cast<int>(options->devices.size());  // PyTorch's default: two per device
          *made = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
        },
        [made, store, timeout, rank, size](Napi::Env env) -> Napi::Value {
          auto* entry = new GroupEntry{*made, store, timeout, rank, size};
          auto external = Napi::External<GroupEntry>::New(env, entry, [](Napi::Env, GroupEntry* e) { delete e; });
          external.TypeTag(&kGroupTag);
          return external;
        });
  });
}

// Waits for a started collective off the JS thread. Gloo's own time-out ends a collective whose peer is silent, and
// a peer that died closes its connections, which fails the collective at once; the wait's own limit is only a
// backstop should Gloo not return.
Napi::Value Await(Napi::Env env, const GroupEntry& entry, c10::intrusive_ptr<c10d::Work> work) {
  Milliseconds backstop = 2 * entry.timeout + Milliseconds(5000);
  auto group = entry.group;  // kept alive while the collective runs, even if the JS handle is collected
  return PromiseWorker::Start(
      env,
      [work, group, backstop] {
        if (!work->wait(backstop)) throw std::runtime_error("the collective was aborted");
      },
      [](Napi::Env env) { return env.Undefined(); });
}

c10d::ReduceOp ReduceOpArg(const Napi::Value& value) {
  std::string name = value.IsString() ? value.As<Napi::String>().Utf8Value() : "";
  if (name == "sum") return c10d::ReduceOp::SUM;
  if (name == "product") return c10d::ReduceOp::PRODUCT;
  if (name == "min") return c10d::ReduceOp::MIN;
  if (name == "max") return c10d::ReduceOp::MAX;
  throw Napi::TypeError::New(value.Env(), "op must be 'sum', 'product', 'min' or 'max'");
}

// allReduce(group, tensor, op) -> Promise: reduces in place across the group.
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = LiveGroup(info[0]);
    std::vector<at::Tensor> tensors{CollectiveTensor(info[1], "tensor")};
    c10d::AllreduceOptions options;
    options.reduceOp = ReduceOpArg(info[2]);
    return Await(env, entry, entry.group->allreduce(tensors, options));
  });
}

// broadcast(group, tensor, root) -> Promise: every rank's tensor takes the root's values.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = LiveGroup(info[0]);
    std::vector<at::Tensor> tensors{CollectiveTensor(info[1], "tensor")};
    c10d::BroadcastOptions options;
    options.rootRank = IntArg(info[2], "root", 0, entry.size - 1);
    return Await(env, entry, entry.group->broadcast(tensors, options));
  });
}

// barrier(group) -> Promise, settled once every rank has called it. It is an all-reduce of one element, as NCCL's
// barrier is: c10d's Gloo barrier also waits on the collectives still in its queue and fails with any of them, so a
// refused collective (a dtype Gloo lacks) could fail a later barrier on one rank only.
Napi::Value Barrier(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = LiveGroup(info[0]);
    std::vector<at::Tensor> flag{at::zeros({1}, at::kInt)};
    return Await(env, entry, entry.group->allreduce(flag));
  });
}

// Outputs must be one tensor per rank, each of the input's type and size.
void CheckOutputs(Napi::Env env, const std::vector<at::Tensor>& outputs, const at::Tensor& input, int size) {
  if (static_cast<int>(outputs.size()) != size)
    throw Napi::RangeError::New(env, "outputs must hold one tensor per rank (" + std::to_string(size) + ")");
  for (const auto& out : outputs) {
    if (out.scalar_type() != input.scalar_type() || !out.sizes().equals(input.sizes()))
      throw Napi::TypeError::New(env, "each output must have the input's dtype and shape");
  }
}

// allGather(group, input, outputs) -> Promise: outputs[r] receives rank r's input, on every rank.
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = LiveGroup(info[0]);
    std::vector<at::Tensor> inputs{CollectiveTensor(info[1], "input")};
    std::vector<std::vector<at::Tensor>> outputs{TensorList(info[2], "outputs")};
    CheckOutputs(env, outputs[0], inputs[0], entry.size);
    return Await(env, entry, entry.group->allgather(outputs, inputs));
  });
}

// gather(group, input, outputs, root) -> Promise: on the root, outputs[r] receives rank r's input; elsewhere outputs
// must be empty.
Napi::Value Gather(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = LiveGroup(info[0]);
    std::vector<at::Tensor> inputs{CollectiveTensor(info[1], "input")};
    std::vector<at::Tensor> list = TensorList(info[2], "outputs");
    c10d::GatherOptions options;
    options.rootRank = IntArg(info[3], "root", 0, entry.size - 1);
    std::vector<std::vector<at::Tensor>> outputs;
    if (entry.rank == options.rootRank) {
      CheckOutputs(env, list, inputs[0], entry.size);
      outputs.push_back(std::move(list));
    } else if (!list.empty()) {
      throw Napi::RangeError::New(env, "outputs must be empty on ranks other than the root");
    }
    return Await(env, entry, entry.group->gather(outputs, inputs, options));
  });
}

// destroyGroup(group, graceful) -> Promise. A rank that is done may still owe its peers the last bytes of the last
// collective, and closing its connections then would fail theirs; so each rank marks itself as gone in the store, and a
// graceful leave waits (up to the time-out) until every rank has. A group whose collective failed leaves without
// waiting: its peers may be dead. Gloo's destructor then waits for queued work and joins its threads, all off the JS
// thread. Destroying twice is harmless.
Napi::Value DestroyGroup(const Napi::CallbackInfo& info) {
  return Guard(info, [&](Napi::Env env) -> Napi::Value {
    GroupEntry& entry = Unwrap<GroupEntry>(info[0], &kGroupTag, "group");
    bool graceful = info[1].ToBoolean().Value();
    auto group = std::move(entry.group);  // leaves the handle empty: later calls say it was destroyed
    auto store = std::move(entry.store);
    int rank = entry.rank, size = entry.size;
    Milliseconds timeout = entry.timeout;
    return PromiseWorker::Start(
        env,
        [group, store, graceful, rank, size, timeout]() mutable {
          if (group && size > 1) {
            try {
              store->set("left/" + std::to_string(rank), std::vector<uint8_t>{1});
              std::vector<std::string> keys;
              for (int r = 0; r < size; ++r) keys.push_back("left/" + std::to_string(r));
              if (graceful) store->wait(keys, timeout);
            } catch (const std::exception&) {
              // A peer that never leaves, or a store already closed by the rank serving it once all had left: either
              // way nothing more is owed.
            }
          }
          group.reset();
          store.reset();
        },
        [](Napi::Env env) { return env.Undefined(); });
  });
}

Napi::Value DistributedInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("available", true);
  Napi::Array backends = Napi::Array::New(env, 1);
  backends.Set(0u, Napi::String::New(env, "gloo"));
  out.Set("backends", backends);
  out.Set("nccl", false);
  out.Set("ncclReason", HEMATO_NCCL_REASON);
  return out;
}

}  // namespace

void InitDistributed(Napi::Env env, Napi::Object exports) {
  exports.Set("distributedInfo", Napi::Function::New(env, DistributedInfo));
  exports.Set("createTcpStore", Napi::Function::New(env, CreateTcpStore));
  exports.Set("createFileStore", Napi::Function::New(env, CreateFileStore));
  exports.Set("closeStore", Napi::Function::New(env, CloseStore));
  exports.Set("initGloo", Napi::Function::New(env, InitGloo));
  exports.Set("allReduce", Napi::Function::New(env, AllReduce));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("allGather", Napi::Function::New(env, AllGather));
  exports.Set("gather", Napi::Function::New(env, Gather));
  exports.Set("destroyGroup", Napi::Function::New(env, DestroyGroup));
}

}  // namespace hemato

#endif  // HEMATO_WITH_C10D
