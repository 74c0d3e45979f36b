#!/usr/bin/env bash
# Get the pinned Detectron2 commit into DEST, apply the compatibility edits, build the C++ ops.
# Usage: scripts/get_detectron2.sh DEST REPO_URL COMMIT
# Re-running is a no-op once DEST is at COMMIT, patched and built.
set -euo pipefail
dest=$1 repo=$2 commit=$3
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}

say() { echo "[detectron2] $*"; }
die() { echo "error: $*" >&2; exit 2; }

if [ ! -d "$dest/.git" ]; then
    [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ] && \
        die "$dest exists but is not a git checkout; move it away and run 'make detectron2' again"
    say "cloning $repo"
    mkdir -p "$(dirname "$dest")"
    tmp="$dest.partial"
    rm -rf "$tmp"
    if ! GIT_TERMINAL_PROMPT=0 timeout 600 git clone --quiet --no-checkout "$repo" "$tmp" 2>"$dest.clone.log"; then
        why=$(grep -v '^\s*$' "$dest.clone.log" | tail -1 | sed 's/^fatal: //')
        rm -rf "$tmp" "$dest.clone.log"
        die "cannot clone $repo ($why); offline, point git at a mirror: make detectron2 DETECTRON2_REPO=/path/to/detectron2-mirror"
    fi
    rm -f "$dest.clone.log"
    mv "$tmp" "$dest"
    cloned=1
fi

cd "$dest"
# A fresh --no-checkout clone has no files yet even when its HEAD is already the pin
# (a clone of a local checkout of the pin).
if [ -n "${cloned:-}" ] || [ "$(git rev-parse HEAD 2>/dev/null || true)" != "$commit" ]; then
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        # The pin is Detectron2 PR #1820 and lies on no branch: fetch the PR ref (it contains the
        # pin as an ancestor), or the commit itself where the server allows fetching by SHA.
        say "fetching pull/1820/head (the pinned commit is on no branch)"
        GIT_TERMINAL_PROMPT=0 git fetch --quiet origin pull/1820/head 2>/dev/null \
            || GIT_TERMINAL_PROMPT=0 git fetch --quiet origin "$commit" \
            || die "cannot fetch $commit from $(git remote get-url origin); check the network or DETECTRON2_REPO"
    fi
    git cat-file -e "$commit^{commit}" 2>/dev/null || die "$commit is not in $(git remote get-url origin)"
    say "checking out $commit"
    git -c advice.detachedHead=false checkout --quiet "$commit"
fi
[ "$(git rev-parse HEAD)" = "$commit" ] || die "HEAD is $(git rev-parse HEAD), expected $commit"
say "at $commit (verified)"

"$python" "$here/patch_detectron2.py" .

# What to build: CPU ops, or CPU + CUDA ops (see scripts/cuda_build_env.py for the rules:
# FORCE_CUDA=1/0, TORCH_CUDA_ARCH_LIST, CUDA_HOME; MAX_JOBS limits parallel compile jobs).
build_env=$("$python" "$here/cuda_build_env.py" build/mgd-cuda-link) || exit 2
eval "$build_env"
stamp=build/mgd-build-target.txt
if ls detectron2/_C*.so >/dev/null 2>&1; then
    built=$(cat "$stamp" 2>/dev/null || true)
    if [ -z "$built" ]; then  # built before stamps existed: ask the module
        built=$("$python" -c 'import torch; from detectron2 import _C; print(_C.get_cuda_version())' 2>/dev/null || true)
        case $built in "CUDA "*) built="CUDA (archs not recorded)" ;; *) built="CPU only" ;; esac
    fi
    case $MGD_BUILD_TARGET/$built in
        CUDA*/"CPU only"*) rebuild="it has the CPU ops only" ;;
        CUDA*/"CUDA (archs not recorded)") rebuild= ;;
        CUDA*/*) [ "${MGD_BUILD_TARGET%% (*}" = "${built%% (*}" ] && rebuild= || rebuild="it was built for ${built%% (*}" ;;
        *) rebuild= ;;  # a CUDA build has the CPU ops too
    esac
    case $MGD_BUILD_TARGET/$built in CPU*/"CPU only") built=$MGD_BUILD_TARGET ;; esac  # say why
    if [ -n "$rebuild" ]; then
        say "rebuilding: $rebuild"
        rm -rf build detectron2/_C*.so
        eval "$("$python" "$here/cuda_build_env.py" build/mgd-cuda-link)"  # recreate the link dir
    fi
fi
if ! ls detectron2/_C*.so >/dev/null 2>&1; then
    case $MGD_BUILD_TARGET in
        CUDA*) say "building the C++ and CUDA extension in place (about 7 minutes per arch with MAX_JOBS=1)" ;;
        *) say "building the C++ extension in place (3-4 minutes on 2 cores)" ;;
    esac
    start=$SECONDS
    "$python" setup.py build_ext --inplace > build.log 2>&1 || {
        tail -20 build.log >&2
        die "building Detectron2's extension failed; the full log is $dest/build.log"
    }
    mkdir -p build && echo "$MGD_BUILD_TARGET" > "$stamp"
    say "build took $((SECONDS - start)) s"
    built=$MGD_BUILD_TARGET
fi
say "built $(ls detectron2/_C*.so) for $built"
