#!/usr/bin/env bash
# Get a Detectron2 commit into DEST, apply the compatibility edits, build the C++ ops.
# Usage: scripts/get_detectron2.sh DEST REPO_URL COMMIT [EXTRA_REQUIREMENTS]
# Exit codes: 0 built, 2 an error, 3 git cannot reach REPO_URL (offline: nothing changed).
# Re-running is a no-op once DEST is at COMMIT, patched and built. A checkout at another commit
# is moved to COMMIT and rebuilt from scratch (never a _C*.so built from other sources), unless
# it holds changes of its own (then it is refused). EXTRA_REQUIREMENTS (a pinned requirements
# file) is installed with --no-deps into DEST/mgd-python-deps, on that checkout's import path only.
set -euo pipefail
dest=$1 repo=$2 commit=$3 extra=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
[ -z "$extra" ] || extra=$(realpath "$extra")
python=${PYTHON:-python}

say() { echo "[detectron2] $*"; }
die() { echo "error: $*" >&2; exit 2; }
unreachable() { echo "error: $*" >&2; exit 3; }  # git cannot reach the repository (offline): exit 3

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
        unreachable "cannot clone $repo ($why); offline, point git at a mirror: make detectron2 DETECTRON2_REPO=/path/to/detectron2-mirror"
    fi
    rm -f "$dest.clone.log"
    mv "$tmp" "$dest"
    cloned=1
fi

cd "$dest"
head=$(git rev-parse HEAD 2>/dev/null || true)
if [ -z "${cloned:-}" ] && [ -n "$head" ] && [ "$head" != "$commit" ]; then
    # Another commit is checked out: only the files our compatibility edits touch may differ
    # from it (anything else is somebody's work, which a checkout would destroy).
    own=$(git status --porcelain --untracked-files=no | sed 's/^...//' \
          | grep -vxF -f <("$python" "$here/patch_detectron2.py" --list) || true)
    [ -z "$own" ] && [ -z "$(git status --porcelain --untracked-files=no | grep -v '^ M' || true)" ] || \
        die "$dest is at ${head:0:12}, not ${commit:0:12}, and holds changes of its own ($(echo $own | head -c 120)); commit or stash them, or use another DETECTRON2_DIR"
    say "$dest is at ${head:0:12}: moving it to ${commit:0:12} and rebuilding from scratch"
    git checkout --quiet --force "$head"  # drop the compatibility edits made for that commit
    rm -rf build detectron2/_C*.so
fi
# A fresh --no-checkout clone has no files yet even when its HEAD is already the pin
# (a clone of a local checkout of the pin).
if [ -n "${cloned:-}" ] || [ "$head" != "$commit" ]; then
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        # The pin is Detectron2 PR #1820 and lies on no branch: fetch the PR ref (it contains the
        # pin as an ancestor), or the commit itself where the server allows fetching by SHA.
        say "fetching pull/1820/head (the pinned commit is on no branch)"
        GIT_TERMINAL_PROMPT=0 git fetch --quiet origin pull/1820/head 2>/dev/null \
            || GIT_TERMINAL_PROMPT=0 git fetch --quiet origin "$commit" \
            || unreachable "cannot fetch $commit from $(git remote get-url origin); check the network or DETECTRON2_REPO"
    fi
    git cat-file -e "$commit^{commit}" 2>/dev/null || die "$commit is not in $(git remote get-url origin)"
    say "checking out $commit"
    git -c advice.detachedHead=false checkout --quiet "$commit"
fi
[ "$(git rev-parse HEAD)" = "$commit" ] || die "HEAD is $(git rev-parse HEAD), expected $commit"
say "at $commit (verified)"

"$python" "$here/patch_detectron2.py" .

if [ -n "$extra" ]; then  # the packages this commit imports beyond requirements.txt
    deps=mgd-python-deps want=$(sha1sum < "$extra" | cut -c1-12)
    if [ "$(cat "$deps/.installed-from" 2>/dev/null || true)" != "$want" ]; then
        say "installing $extra into $dest/$deps (this checkout's import path only)"
        rm -rf "$deps"
        "$python" -m pip install --quiet --root-user-action=ignore --no-deps --no-compile --target "$deps" -r "$extra" \
            || die "could not install $extra into $dest/$deps (see pip's message above)"
        echo "$want" > "$deps/.installed-from"
    fi
fi

commit_stamp=build/mgd-build-commit.txt
if ls detectron2/_C*.so >/dev/null 2>&1 && [ "$(cat "$commit_stamp" 2>/dev/null || true)" != "$commit" ]; then
    # a build whose sources are not known to be this commit's (made by hand, or before the
    # commit was recorded): never keep it
    say "rebuilding: the existing _C*.so was not built from ${commit:0:12} here"
    rm -rf build detectron2/_C*.so
fi

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
    # Call the new module once: a build against a mismatched C++ runtime can import fine and
    # crash (SIGSEGV) at its first call returning a string, which Detectron2's environment
    # report makes at every start (seen on a GPU image whose default CC was a wrapped GCC).
    # The call runs in a child of Python, so that a crash is an exit status, not a bash message.
    rc=0
    PYTHONPATH="$PWD:$PWD/mgd-python-deps${PYTHONPATH:+:$PYTHONPATH}" "$python" -c 'import subprocess, sys
r = subprocess.run([sys.executable, "-c", "import detectron2._C as ops; ops.get_compiler_version(); ops.get_cuda_version()"])
sys.exit(128 - r.returncode if r.returncode < 0 else r.returncode)' > build-check.log 2>&1 || rc=$?
    if [ $rc -gt 128 ]; then
        rm -f detectron2/_C*.so  # never keep a build that crashes when called
        die "the extension just built crashes when called (signal $((rc - 128)); built with CXX=${CXX:-c++}); rebuild with the system compiler: CC=/usr/bin/gcc CXX=/usr/bin/g++ make detectron2"
    elif [ $rc -ne 0 ]; then  # e.g. a package Detectron2 imports is missing: not the build's fault
        say "warning: could not call the new module to check it (exit $rc; see $dest/build-check.log)"
    else
        rm -f build-check.log
    fi
    mkdir -p build && echo "$MGD_BUILD_TARGET" > "$stamp" && echo "$commit" > "$commit_stamp"
    say "build took $((SECONDS - start)) s"
    built=$MGD_BUILD_TARGET
fi
say "built $(ls detectron2/_C*.so) for $built"
