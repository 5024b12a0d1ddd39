#!/usr/bin/env bash
# hemato offline bundle: checks this machine, unpacks the bundled node, builds the libtorch addon against this
# machine's libtorch, then runs a hemato command. Nothing is downloaded.
#
#   ./run.sh doctor --json      prepare (once), then run `hemato doctor --json`
#   ./run.sh --check            only check this machine and the bundle's model, and say what is missing
#   ./run.sh --prepare          check, unpack node and build the addon, run nothing
#   ./run.sh --node FILE ARGS   prepare, then run a JS file with the bundled node (from the app directory)
#   ./run.sh --rebuild ...      rebuild the addon even when its stamp matches
#
# libtorch is found as native/locate-libtorch.mjs finds it: $LIBTORCH (a libtorch directory or a PyTorch
# installation), then the torch package of python3, then Debian's libtorch-dev. Messages go to stderr, so that
# stdout holds only what hemato prints (`doctor --json` stays one JSON document).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
APP=$HERE/app
NODE_DIR=$HERE/node
NODE=$NODE_DIR/bin/node
BUILD=$APP/native/build
ADDON=$BUILD/Release/hemato_native.node
SYSTEM_INCLUDE=/usr/include
SYSTEM_LIBDIR=/usr/lib/x86_64-linux-gnu

# HEMATO_RUN_QUIET=1 keeps only notes, what is missing and errors (gpu-check.sh sets it after its first call).
say() { [ "${HEMATO_RUN_QUIET:-0}" = 1 ] || printf 'run.sh: %s\n' "$*" >&2; }
note() { printf 'run.sh: %s\n' "$*" >&2; }
die() { printf 'run.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }

mode=run
rebuild=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) mode=check; shift ;;
    --prepare) mode=prepare; shift ;;
    --rebuild) rebuild=1; shift ;;
    --node) mode=node; shift; break ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) break ;;
  esac
done

# ---- checks: gather everything missing, then say it all at once
missing=()
warnings=()

if command -v g++ >/dev/null 2>&1; then
  say "g++: $(g++ --version | head -n1)"
else
  missing+=("g++ (the addon is compiled here): apt-get install -y g++")
fi
for tool in xz tar; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (unpacks the bundled node): apt-get install -y ${tool/xz/xz-utils}")
done

# libtorch: where it came from, its -I directories and its lib directory.
torch_source=''
torch_includes=()
torch_libdir=''
abi=''
py_report=''

from_root() {  # a libtorch directory or a PyTorch installation (site-packages or site-packages/torch)
  local root=$1
  [ -d "$root/torch/include" ] && root=$root/torch
  if [ -d "$root/include/torch" ] && [ -d "$root/lib" ]; then
    torch_includes=("$root/include" "$root/include/torch/csrc/api/include")
    torch_libdir=$root/lib
    return 0
  fi
  return 1
}

if [ -n "${LIBTORCH:-}" ]; then
  from_root "$LIBTORCH" || die "LIBTORCH=$LIBTORCH holds no libtorch (expected include/torch and lib/ there, or torch/include and torch/lib)."
  torch_source="LIBTORCH=$LIBTORCH"
fi

if command -v python3 >/dev/null 2>&1; then
  # One python3 call: where torch is, its version, its C++ ABI, and whether it sees CUDA.
  if py_report=$(python3 - 2>/dev/null <<'PY'
import os, torch
cuda = torch.cuda.is_available()
names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
print(os.path.dirname(torch.__file__))
print(torch.__version__)
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "none")
print(int(cuda), torch.cuda.device_count() if cuda else 0)
print(names)
PY
  ); then
    { read -r py_torch_dir; read -r py_torch_version; read -r py_abi; read -r py_cuda_version; read -r py_cuda_ok py_cuda_count; read -r py_cuda_names || true; } <<<"$py_report"
    say "python3: $(python3 --version 2>&1), torch $py_torch_version (CUDA build: $py_cuda_version) at $py_torch_dir"
    if [ "$py_cuda_ok" = 1 ]; then
      say "torch sees CUDA: $py_cuda_count device(s): $py_cuda_names"
    else
      say "torch sees no CUDA device"
    fi
    if [ -z "$torch_source" ] && from_root "$py_torch_dir"; then
      torch_source="python3 torch package ($py_torch_dir)"
      abi=$py_abi
    fi
  else
    warnings+=("python3 ($(python3 --version 2>&1)) has no importable torch: falling back to the system libtorch")
  fi
else
  warnings+=("python3 not found: falling back to the system libtorch")
fi

if [ -z "$torch_source" ] && [ -e "$SYSTEM_LIBDIR/libtorch_cpu.so" ] && [ -d "$SYSTEM_INCLUDE/torch/csrc/api/include" ]; then
  torch_source="Debian's libtorch-dev"
  torch_includes=("$SYSTEM_INCLUDE/torch/csrc/api/include")
  torch_libdir=$SYSTEM_LIBDIR
fi
if [ -z "$torch_source" ]; then
  missing+=("libtorch: install PyTorch for python3 (pip install torch), or apt-get install -y libtorch-dev libopenblas0-pthread, or point LIBTORCH at a libtorch directory")
fi

# The version macros live in torch/headeronly/version.h since 2.13, in torch/version.h before.
torch_version=''
if [ -n "$torch_source" ]; then
  version_h=''
  for dir in "${torch_includes[@]}"; do
    for f in "$dir/torch/headeronly/version.h" "$dir/torch/version.h"; do
      if [ -z "$version_h" ] && grep -qs '^#define TORCH_VERSION_MAJOR' "$f"; then version_h=$f; fi
    done
  done
  if [ -n "$version_h" ]; then
    major=$(sed -n 's/^#define TORCH_VERSION_MAJOR \([0-9]*\).*/\1/p' "$version_h")
    minor=$(sed -n 's/^#define TORCH_VERSION_MINOR \([0-9]*\).*/\1/p' "$version_h")
    torch_version=$major.$minor
  else
    missing+=("the libtorch version header (torch/version.h) under ${torch_includes[*]}: the libtorch headers are incomplete")
  fi
  has_lib() { compgen -G "$torch_libdir/lib$1.so*" >/dev/null; }
  libs=(torch torch_cpu c10)
  cuda_libs=0
  if has_lib torch_cuda; then libs+=(torch_cuda); cuda_libs=1; fi
  if has_lib c10_cuda; then libs+=(c10_cuda); fi
  say "libtorch: ${torch_version:-?} from $torch_source (libdir $torch_libdir; CUDA libraries: $([ $cuda_libs = 1 ] && echo yes || echo no))"
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  if gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) && [ -n "$gpus" ]; then
    while IFS= read -r gpu; do say "GPU: $gpu"; done <<<"$gpus"
    [ "${py_cuda_ok:-0}" = 1 ] || [ "${cuda_libs:-0}" = 1 ] || warnings+=("a GPU is present, but this libtorch has no CUDA libraries: hemato will run on the CPU")
  else
    warnings+=("nvidia-smi is present but lists no GPU: CPU only")
  fi
else
  warnings+=("no GPU found (nvidia-smi absent): hemato will run on the CPU")
fi

# The model: a bundle made with --no-model classifies nothing without a model file, so doctor and --check fail.
models=("$APP"/models/*.safetensors)
if [ -e "${models[0]}" ]; then
  say "model: ${models[*]#"$HERE"/}"
elif [ "$mode" = check ] || [ "${1:-}" = doctor ]; then
  missing+=("a model: this bundle carries none (made with --no-model): make it again without --no-model, or with --model FILE")
else
  warnings+=("this bundle carries no model: give predict, eval and calibrate a model file")
fi

for w in "${warnings[@]+"${warnings[@]}"}"; do note "note: $w"; done
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do note "missing: $m"; done
  die "what the bundle needs is missing (listed above)" 3
fi
if [ "$mode" = check ]; then
  say "all checks passed"
  exit 0
fi

# ---- node: unpack once
if [ ! -x "$NODE" ]; then
  [ -f "$NODE_DIR/node.xz" ] || die "the bundle holds no node/node.xz: was it extracted completely?"
  say "unpacking node"
  mkdir -p "$NODE_DIR/bin"
  xz -dc "$NODE_DIR/node.xz" >"$NODE.tmp"
  chmod +x "$NODE.tmp"
  mv "$NODE.tmp" "$NODE"
fi
node_version=$("$NODE" --version 2>&1) || die "the bundled node does not run here: $node_version"
say "node: $node_version"

# ---- the addon: built with g++ directly (no node-gyp here), against the N-API headers the bundle carries
# C++17, unless the headers demand C++20 (libtorch 2.14 and newer refuse anything older).
std=c++17
if [ "${major:-0}" -gt 2 ] || { [ "${major:-0}" = 2 ] && [ "${minor:-0}" -ge 14 ]; } ||
  grep -qs 'C++20 or later' "${torch_includes[0]}/c10/macros/Macros.h" "${torch_includes[0]}/ATen/ATen.h" \
    "${torch_includes[-1]}/torch/all.h"; then
  std=c++20
fi
abi=${HEMATO_CXX11_ABI:-${abi:-1}}  # PyTorch says which; Debian's and the libtorch downloads since 2.7 use 1
sources=("$APP"/native/src/*.cc)
includes=(-I"$APP/native/napi-include" -I"$APP/node_modules/node-addon-api")
for dir in "${torch_includes[@]}"; do includes+=(-I"$dir"); done
cxxflags=(-std="$std" -fPIC -pthread -O2 -fexceptions -frtti -Wno-unused-parameter -Wno-deprecated-declarations
  -D_GLIBCXX_USE_CXX11_ABI="$abi" -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED -DBUILDING_NODE_EXTENSION
  -DNODE_GYP_MODULE_NAME=hemato_native)
# The distributed binding (native/src/c10d.cc) where native/locate-libtorch.mjs finds c10d's and Gloo's headers; else
# the addon reports why it is missing. LIBTORCH names the libtorch found above, so that the check looks at that one.
case "$torch_source" in
  LIBTORCH=*) locate_root=$LIBTORCH ;;
  python3*) locate_root=$py_torch_dir ;;
  *) locate_root='' ;;
esac
locate() { LIBTORCH=$locate_root "$NODE" "$APP/native/locate-libtorch.mjs" "$1" 2>/dev/null; }
c10d_flags=()
if [ "$(locate c10d)" = 1 ]; then
  c10d_flags=(-DHEMATO_WITH_C10D -DUSE_C10D_GLOO -I"$(locate c10dInclude)")
  say "distributed: c10d with Gloo"
else
  c10d_reason=$(locate c10dReason) || c10d_reason='native/locate-libtorch.mjs could not check this libtorch'
  c10d_flags=(-DHEMATO_C10D_UNAVAILABLE="\"$c10d_reason\"")
  say "distributed: unavailable ($c10d_reason)"
fi
cxxflags+=(-DHEMATO_NCCL_REASON="\"$(locate ncclReason || echo 'hemato binds only Gloo so far')\"" "${c10d_flags[@]}")
# --no-as-needed keeps libtorch_cuda and c10_cuda linked although no symbol of theirs is referenced: loading them
# is what registers CUDA with the dispatcher.
ldflags=(-shared -pthread -L"$torch_libdir" -Wl,-rpath,"$torch_libdir" -Wl,--no-as-needed)
for lib in "${libs[@]}"; do ldflags+=(-l"$lib"); done
ldflags+=(-Wl,--as-needed)

stamp_text=$(printf '%s\n' "$torch_source" "$torch_libdir" "$torch_version" "$(g++ --version | head -n1)" \
  "${cxxflags[*]}" "${ldflags[*]}" "$(cat "${sources[@]}" "$APP"/native/src/*.h | sha256sum | cut -d' ' -f1)")
if [ "$rebuild" = 0 ] && [ -f "$ADDON" ] && [ "$(cat "$BUILD/stamp" 2>/dev/null)" = "$stamp_text" ]; then
  say "addon: up to date ($ADDON)"
else
  note "building the addon against libtorch $torch_version ($std, _GLIBCXX_USE_CXX11_ABI=$abi, ${#sources[@]} files)"
  started=$SECONDS
  mkdir -p "$BUILD/Release/obj"
  rm -f "$BUILD/stamp"
  pids=()
  for src in "${sources[@]}"; do
    obj=$BUILD/Release/obj/$(basename "${src%.cc}").o
    g++ "${cxxflags[@]}" "${includes[@]}" -c "$src" -o "$obj" 2>"$obj.log" &
    pids+=($!)
  done
  failed=()
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      failed+=("$(basename "${sources[$i]}")")
      say "compiling $(basename "${sources[$i]}") failed:"
      head -n 40 "$BUILD/Release/obj/$(basename "${sources[$i]%.cc}").o.log" >&2
    fi
  done
  # A c10d.cc this libtorch's c10d does not accept costs distributed training, not the addon: addon.cc is compiled
  # again without it, and the addon reports why.
  if [ "${failed[*]}" = c10d.cc ]; then
    cp "$BUILD/Release/obj/c10d.o.log" "$BUILD/c10d-error.log"
    note "note: the distributed binding did not compile against this libtorch ($BUILD/c10d-error.log); building without it"
    reason="native/src/c10d.cc did not compile against this libtorch (see $BUILD/c10d-error.log)"
    without=()
    for flag in "${cxxflags[@]}"; do
      [ "$flag" = -DHEMATO_WITH_C10D ] && flag=-DHEMATO_C10D_UNAVAILABLE="\"$reason\""
      without+=("$flag")
    done
    for name in addon c10d; do
      g++ "${without[@]}" "${includes[@]}" -c "$APP/native/src/$name.cc" -o "$BUILD/Release/obj/$name.o" 2>"$BUILD/Release/obj/$name.o.log" ||
        { head -n 40 "$BUILD/Release/obj/$name.o.log" >&2; die "the addon did not compile without the distributed binding either"; }
    done
    failed=()
  fi
  [ ${#failed[@]} = 0 ] || die "the addon did not compile (first lines of each error above)"
  g++ -o "$ADDON.tmp" "$BUILD"/Release/obj/*.o "${ldflags[@]}" || die "linking the addon failed"
  mv "$ADDON.tmp" "$ADDON"
  # What native/locate-libtorch.mjs records for a node-gyp build; `hemato doctor` reads it.
  json_list() { local out='' x; for x in "$@"; do out+="${out:+,}\"$x\""; done; printf '[%s]' "$out"; }
  printf '{"source":"%s","include":%s,"libdir":"%s","cuda":%s,"libs":%s}\n' "$torch_source" \
    "$(json_list "${torch_includes[@]}")" "$torch_libdir" "$([ "$cuda_libs" = 1 ] && echo true || echo false)" \
    "$(json_list "${libs[@]}")" >"$BUILD/libtorch.json"
  printf '%s\n' "$stamp_text" >"$BUILD/stamp"
  say "addon built in $((SECONDS - started)) s"
fi

export HEMATO_BUNDLE=$HERE
case "$mode" in
  prepare) say "ready: $NODE, $ADDON" ;;
  node) cd "$APP" && exec "$NODE" "$@" ;;
  run) exec "$NODE" "$APP/bin/hemato.js" "$@" ;;
esac
