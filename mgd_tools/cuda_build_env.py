"""The environment of a CUDA build of Detectron2: the toolkit, its headers, the cudart link,
the arch list (the rules: scripts/cuda_build_env.py, the command line that prints it).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional
from mgd.errors import UserError

# sm_80 cubins also run on 8.6/8.9 GPUs; the 8.6/8.9 entries give them tuned code. 9.0+PTX adds
# PTX that the driver compiles for newer GPUs (Blackwell). CUDA 13 supports 7.5 and newer only.
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
# Headers that torch's CUDA headers (ATen/cuda/CUDAContext.h) include and the ops' .cu files need.
REQUIRED_HEADERS = ("cuda.h", "cuda_runtime_api.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h", "cusparse.h")


class BuildEnvError(UserError):
    pass


def nvcc_version(nvcc: Path) -> str:
    """'13.0' from ``nvcc --version`` ('Cuda compilation tools, release 13.0, V13.0.88')."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as e:
        raise BuildEnvError(f"cannot run {nvcc} ({e})")
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise BuildEnvError(f"cannot read the CUDA version from '{nvcc} --version'")
    return match.group(1)


def find_toolkit() -> Path:
    """The CUDA toolkit directory (holding bin/nvcc and include/cuda_runtime_api.h)."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            home = Path(os.environ[name])
            if not (home / "bin" / "nvcc").is_file():
                raise BuildEnvError(f"{name}={home} has no bin/nvcc; point {name} at a CUDA toolkit")
            return home
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # `which nvcc` may be a wrapper script (e.g. /usr/local/bin/nvcc), hence the fallbacks.
        candidates += [Path(nvcc).resolve().parent.parent, Path(nvcc).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").is_file() and any(
            (inc / "cuda_runtime_api.h").is_file() for inc in include_dirs(home)
        ):
            return home
    raise BuildEnvError(
        "no CUDA toolkit found (nvcc); install one (https://developer.nvidia.com/cuda-downloads) "
        "and set CUDA_HOME, or build the CPU ops only with FORCE_CUDA=0"
    )


def include_dirs(home: Path) -> List[Path]:
    return [home / "include"] + sorted(home.glob("targets/*/include"))


def library_dirs(home: Path) -> List[Path]:
    return [home / "lib64", home / "lib"] + sorted(home.glob("targets/*/lib"))


def pip_cuda_roots() -> List[Path]:
    """Directories of the ``nvidia`` wheels (nvidia/cu13, nvidia/cusparse, ...), if installed."""
    try:
        import nvidia  # namespace package of NVIDIA's pip wheels, installed with torch's CUDA builds
    except ImportError:
        return []
    return sorted(p for root in nvidia.__path__ for p in Path(root).iterdir() if p.is_dir())


def missing_headers(home: Path) -> Dict[str, Optional[Path]]:
    """Headers absent from the toolkit -> the pip wheel include dir that has them (or None)."""
    found: Dict[str, Optional[Path]] = {}
    for header in REQUIRED_HEADERS:
        if any((inc / header).is_file() for inc in include_dirs(home)):
            continue
        found[header] = next(
            (root / "include" for root in pip_cuda_roots() if (root / "include" / header).is_file()), None
        )
    return found


def cudart_link_dir(home: Path, cuda_major: str, link_dir: Path) -> Optional[Path]:
    """None when the toolkit has ``libcudart.so``; else LINK_DIR holding a libcudart.so symlink."""
    if any((d / "libcudart.so").exists() for d in library_dirs(home)):
        return None
    soname = f"libcudart.so.{cuda_major}"
    candidates = [d / soname for d in library_dirs(home)]
    candidates += [root / "lib" / soname for root in pip_cuda_roots()]
    target = next((p for p in candidates if p.is_file()), None)
    if target is None:
        raise BuildEnvError(
            f"no libcudart.so or {soname} in {home} or the nvidia pip wheels; "
            "install the CUDA runtime (pip install nvidia-cuda-runtime) or a full CUDA toolkit"
        )
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libcudart.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())
    return link_dir


def arch_list(torch) -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return DEFAULT_ARCH_LIST


def build_env(link_dir: Path) -> Dict[str, str]:
    """The variables to export for the build, MGD_BUILD_TARGET included."""
    import torch

    force = os.environ.get("FORCE_CUDA", "")
    if force == "0" or (force != "1" and not torch.cuda.is_available()):
        why = "FORCE_CUDA=0" if force == "0" else "torch sees no GPU; FORCE_CUDA=1 builds the CUDA ops too"
        env = {"MGD_BUILD_TARGET": f"CPU only ({why})", "FORCE_CUDA": "0"}
        if torch.cuda.is_available():
            env["CUDA_VISIBLE_DEVICES"] = ""  # the pin's setup.py builds CUDA whenever it sees a GPU
        return env
    if torch.version.cuda is None:
        raise BuildEnvError(
            f"torch {torch.__version__} is a CPU-only build, so the CUDA ops cannot be built; "
            "install a CUDA build of torch or unset FORCE_CUDA"
        )
    home = find_toolkit()
    nvcc_cuda = nvcc_version(home / "bin" / "nvcc")
    cuda_major = torch.version.cuda.split(".")[0]
    if nvcc_cuda.split(".")[0] != cuda_major:
        raise BuildEnvError(
            f"nvcc in {home} is CUDA {nvcc_cuda} but torch {torch.__version__} is built with CUDA "
            f"{torch.version.cuda}; set CUDA_HOME to a CUDA {cuda_major}.x toolkit"
        )
    env = {"FORCE_CUDA": "1", "CUDA_HOME": str(home), "TORCH_CUDA_ARCH_LIST": arch_list(torch)}
    notes = []
    headers = missing_headers(home)
    if headers:
        absent = sorted(h for h, d in headers.items() if d is None)
        if absent:
            raise BuildEnvError(
                f"the CUDA toolkit in {home} lacks {', '.join(absent)} and no nvidia pip wheel has them; "
                "install the toolkit's development packages (cuBLAS, cuSOLVER, cuSPARSE)"
            )
        dirs = sorted({str(d) for d in headers.values()})
        env["CPATH"] = os.pathsep.join(dirs + ([os.environ["CPATH"]] if os.environ.get("CPATH") else []))
        notes.append(f"{', '.join(sorted(headers))} from the nvidia pip wheels")
    linked = cudart_link_dir(home, cuda_major, link_dir)
    if linked is not None:
        old = os.environ.get("LIBRARY_PATH")
        env["LIBRARY_PATH"] = os.pathsep.join([str(linked)] + ([old] if old else []))
        notes.append(f"libcudart.so -> {(linked / 'libcudart.so').resolve()}")
    target = f"CUDA {nvcc_cuda} archs {env['TORCH_CUDA_ARCH_LIST']} + CPU ops (nvcc: {home}/bin/nvcc"
    env["MGD_BUILD_TARGET"] = target + "".join(f"; {n}" for n in notes) + ")"
    return env
