#!/usr/bin/env bash
# One-step set-up on Debian 12 as root: system packages (libtorch, OpenBLAS, Gloo's headers, a C++ toolchain), npm
# packages, then the native addon and the TypeScript build. Safe to run again; it only installs what is missing.
# --test also installs Chromium, which the review page's browser test drives.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    -h|--help) echo "usage: bash scripts/setup.sh [--test]   (--test: also Chromium, for the browser test)"; exit 0 ;;
    *) echo "hemato setup: unknown option '$arg' (usage: bash scripts/setup.sh [--test])" >&2; exit 2 ;;
  esac
done

packages=()
if [ -z "${LIBTORCH:-}" ]; then
  # libgloo-dev: the headers of the Gloo inside Debian's libtorch, which the addon's distributed binding needs.
  for pkg in libtorch-dev libopenblas0-pthread libgloo-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || packages+=("$pkg")
  done
fi
command -v g++ >/dev/null 2>&1 || packages+=(g++)
command -v make >/dev/null 2>&1 || packages+=(make)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
if [ "$with_tests" -eq 1 ] && [ ! -x /usr/bin/chromium ]; then
  packages+=(chromium)
fi

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "hemato setup: missing system packages: ${packages[*]}" >&2
    echo "Install them as root: apt-get update && apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
  echo "hemato setup: installing ${packages[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
echo "hemato setup: done" >&2
