"""Make Detectron2 importable for this repository's entry points and tests: one way, here.

``make detectron2`` builds Detectron2 in place, without installing it, in ``<repo>/detectron2``
(``DETECTRON2=pin``, the default) or ``<repo>/detectron2-latest`` (``DETECTRON2=latest``);
``DETECTRON2_DIR=<path>`` names any other checkout. The Makefile passes the chosen checkout
to every command as ``MGD_DETECTRON2_DIR``; a command run by hand without it uses an installed
Detectron2 if there is one, else ``<repo>/detectron2``. A checkout's own extra packages
(``<checkout>/mgd-python-deps``, e.g. today's Detectron2's omegaconf) go on the path with it.

Whatever imports the overlay (``detectron2.*.mgd_*``, copied from ``d2/``) calls
:func:`use_detectron2_with_overlay`: it also refreshes a stale copy (:mod:`mgd.overlay`).
The repository's own packages are found as installed (``make install``: editable) or on the
``PYTHONPATH`` the Makefile exports; nothing here puts the repository root on ``sys.path``.

No Detectron2 import happens here (``mgd`` stays framework-free).
"""
import importlib.util
import os
import re
import subprocess
import sys
from typing import Callable, Dict, List, Optional

from .overlay import OverlayError, refresh_overlay

__all__ = [
    "CHECKOUT_ENV",
    "detectron2_checkout",
    "detectron2_import_paths",
    "use_detectron2",
    "use_detectron2_with_overlay",
    "tested_commits",
    "checkout_commit",
    "describe_detectron2",
]

#: the environment variable naming the Detectron2 checkout to use
CHECKOUT_ENV = "MGD_DETECTRON2_DIR"
_EXTRA_PACKAGES = "mgd-python-deps"


def detectron2_checkout(repo_root: str) -> str:
    """The Detectron2 checkout this run uses: ``$MGD_DETECTRON2_DIR``, else ``<repo>/detectron2``."""
    chosen = os.environ.get(CHECKOUT_ENV)
    return os.path.abspath(chosen) if chosen else os.path.join(os.path.abspath(repo_root), "detectron2")


def detectron2_import_paths(checkout: str) -> List[str]:
    """What goes first on ``sys.path`` / PYTHONPATH for ``checkout``: the checkout itself
    (``import detectron2`` finds its package there) and its extra packages if it has any."""
    extra = os.path.join(checkout, _EXTRA_PACKAGES)
    return [checkout] + ([extra] if os.path.isdir(extra) else [])


def use_detectron2(repo_root: str) -> bool:
    """Put the checkout of :func:`detectron2_checkout` first on ``sys.path``: always when
    ``$MGD_DETECTRON2_DIR`` names it, else only when no installed Detectron2 is importable
    (from the repository root, the bare ``detectron2/`` folder would otherwise import as an
    empty namespace package). Returns whether it did."""
    checkout = detectron2_checkout(repo_root)
    if not os.path.isdir(os.path.join(checkout, "detectron2")):
        return False
    if not os.environ.get(CHECKOUT_ENV):
        spec = importlib.util.find_spec("detectron2")
        if spec is not None and spec.origin is not None:  # a real package, not the bare folder
            return False
    for path in reversed(detectron2_import_paths(checkout)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    return True


def use_detectron2_with_overlay(repo_root: str, exit_on_error: bool = True,
                                say: Optional[Callable[[str], None]] = None) -> str:
    """:func:`use_detectron2`, then make the overlay's copy in the checkout match ``d2/`` and
    ``configs/`` (copying what changed, with one line to ``say``, default stderr), so the code that runs is
    this repository's. Returns the checkout (the folder above the ``detectron2`` package).

    When the copy cannot be refreshed (no Detectron2, a checkout you cannot write to): one
    line ``error: ...`` and exit code 2 (``exit_on_error``), else :class:`mgd.overlay.OverlayError`.
    """
    try:
        if use_detectron2(repo_root):
            checkout = detectron2_checkout(repo_root)
        else:  # an installed Detectron2: its package folder, found without importing it
            spec = importlib.util.find_spec("detectron2")
            if spec is None or spec.origin is None:
                raise OverlayError(f"Detectron2 is not built at {detectron2_checkout(repo_root)} nor installed; "
                                   "run `make detectron2` first")
            checkout = os.path.dirname(os.path.dirname(spec.origin))
        refresh_overlay(repo_root, checkout, say=say)
    except OverlayError as error:
        if not exit_on_error:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return checkout


def tested_commits(repo_root: str) -> Dict[str, str]:
    """{"pin": sha, "latest": sha}: the two Detectron2 commits this repository is tested on, as
    the Makefile defines them (``DETECTRON2_PIN_COMMIT``, ``DETECTRON2_LATEST_COMMIT``)."""
    try:
        with open(os.path.join(repo_root, "Makefile")) as f:
            text = f.read()
    except OSError:
        return {}
    found = re.findall(r"^DETECTRON2_(PIN|LATEST)_COMMIT\s*:?=\s*([0-9a-f]{40})\s*$", text, re.M)
    return {name.lower(): sha for name, sha in found}


def checkout_commit(checkout: str) -> Optional[str]:
    """The commit checked out in ``checkout`` (a git work tree), or None."""
    try:
        out = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def describe_detectron2(repo_root: str, package_dir: str) -> str:
    """One line: where the imported Detectron2 lives, its commit, and whether it is tested.

    Args:
        repo_root: this repository (its Makefile names the tested commits).
        package_dir: the imported ``detectron2`` package folder (``dirname(detectron2.__file__)``).
    """
    checkout = os.path.dirname(os.path.abspath(package_dir))
    sha = checkout_commit(checkout)
    tested = {sha: name for name, sha in tested_commits(repo_root).items()}
    if sha is None:
        verdict = "commit unknown (not a git checkout): not one of the two tested commits"
    elif sha in tested:
        what = "the pinned commit (MGD authors' PR #1820)" if tested[sha] == "pin" else "today's main"
        verdict = f"commit {sha[:12]}, {what}: tested (DETECTRON2={tested[sha]})"
    else:
        names = ", ".join(f"{name} {value[:12]}" for value, name in sorted(tested.items(), key=lambda kv: kv[1]))
        verdict = f"commit {sha[:12]}: NOT one of the two tested commits ({names}); expect differences"
    return f"Detectron2 at {checkout}: {verdict}"
