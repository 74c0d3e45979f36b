"""Fingerprints of what the MGD RetinaNet computes on fixed weights and batches, to hold the
RetinaNet path unchanged while the distiller learns other detectors (tests/d2/test_retinanet_unchanged.py;
not a test itself).

    python tests/retinanet_reference.py record    # writes tests/data/mgd_retinanet_reference.json

Everything ``tests/cross_version_dump.py`` computes (taps, margins, matching costs and
assignments, per-position and detection losses, the student's gradients, inference outputs),
each tensor reduced to its shape, dtype, float64 sum and the SHA-256 of its bytes. The weights
are drawn from fixed seeds at every call, so nothing large is stored. Recorded with one thread.
"""
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch

#: where the recording lives (committed)
REFERENCE = Path(__file__).resolve().parent / "data" / "mgd_retinanet_reference.json"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def fingerprint(tensor: torch.Tensor) -> dict:
    """shape, dtype, float64 sum and the SHA-256 of the contiguous bytes of ``tensor``."""
    t = tensor.detach().contiguous().cpu()
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "sum": float(t.double().sum()), "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest()}


def fingerprints() -> Dict[str, dict]:
    """{name: fingerprint} of one dump on freshly drawn weights (one thread)."""
    from cross_version_dump import dump

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = dump(Path(tmp) / "weights.pt")
    return {key: fingerprint(value) for key, value in sorted(out.items())}


def record(note: str) -> None:
    import torch as _torch

    data = {"note": note, "cpu": cpu_model(), "torch": _torch.__version__, "values": fingerprints()}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFERENCE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(REFERENCE)
    print(f"wrote {REFERENCE}: {len(data['values'])} tensors")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "record":
        sys.exit("usage: python tests/retinanet_reference.py record [NOTE]")
    record(" ".join(sys.argv[2:]) or "recorded before the MGD meta-architecture took other detectors")
