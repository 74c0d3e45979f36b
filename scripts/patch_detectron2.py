#!/usr/bin/env python
"""Apply the few identifier-level edits the pinned Detectron2 needs on today's numpy/Pillow/setuptools.

Usage: python scripts/patch_detectron2.py DETECTRON2_CHECKOUT

Each edit replaces a name that a current dependency removed by the name it was an alias of, so
behaviour is unchanged. The script is idempotent (an applied edit is recognised and skipped) and
verifies afterwards that no removed name is left in the files it touches.
"""
import re
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple


class Edit(NamedTuple):
    path: str
    reason: str
    apply: Callable[[str], str]
    leftover: str  # regex that must not match once the edit is applied


# np.bool / np.int / np.float / np.str were aliases of the builtins; numpy 1.24 removed them.
_NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![\w.])")


def _numpy_aliases(text: str) -> str:
    return _NUMPY_ALIAS.sub(lambda m: m.group(1), text)


def _pillow_linear(text: str) -> str:
    return text.replace("Image.LINEAR", "Image.BILINEAR")


def _model_zoo_without_pkg_resources(text: str) -> str:
    text = text.replace("import pkg_resources\n", "")
    return re.sub(
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*os\.path\.join\("configs", config_path\)\s*\)',
        'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
        text,
    )


NUMPY_REASON = "numpy >= 1.24 removed the np.bool/np.int/np.float/np.str aliases of the builtins"
EDITS: List[Edit] = [
    Edit(
        "detectron2/data/transforms/transform.py",
        "Pillow >= 10 removed Image.LINEAR, an alias of Image.BILINEAR (same filter); "
        "importing detectron2.data fails without this",
        _pillow_linear,
        r"Image\.LINEAR\b",
    ),
    Edit(
        "detectron2/model_zoo/model_zoo.py",
        "setuptools >= 81 no longer ships pkg_resources; the config path is found next to the module",
        _model_zoo_without_pkg_resources,
        r"pkg_resources",
    ),
] + [
    Edit(path, NUMPY_REASON, _numpy_aliases, _NUMPY_ALIAS.pattern)
    for path in (
        "detectron2/data/build.py",
        "detectron2/data/datasets/pascal_voc.py",
        "detectron2/structures/masks.py",
        "detectron2/utils/visualizer.py",
        "detectron2/utils/video_visualizer.py",
        "detectron2/evaluation/sem_seg_evaluation.py",
        "detectron2/evaluation/pascal_voc_evaluation.py",
    )
]


def patch(root: Path) -> int:
    """Apply every edit under ``root``; returns the number of files changed."""
    changed = 0
    for edit in EDITS:
        path = root / edit.path
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; is {root} a Detectron2 checkout?")
        before = path.read_text()
        after = edit.apply(before)
        if after != before:
            path.write_text(after)
            changed += 1
            print(f"[detectron2] patched {edit.path}: {edit.reason}")
        if re.search(edit.leftover, after):
            raise SystemExit(f"error: {edit.path} still matches {edit.leftover!r} after patching")
    return changed


def main() -> None:
    if sys.argv[1:] == ["--list"]:  # the files an edit may touch (scripts/get_detectron2.sh)
        print("\n".join(edit.path for edit in EDITS))
        return
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/patch_detectron2.py DETECTRON2_CHECKOUT | --list")
    changed = patch(Path(sys.argv[1]))
    print(f"[detectron2] compatibility edits: {len(EDITS)} checked, {changed} files changed now")


if __name__ == "__main__":
    main()
