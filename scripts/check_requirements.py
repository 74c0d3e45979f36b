#!/usr/bin/env python
"""Whether the pinned requirements are installed, without pip (`make install`'s fast path).

    python scripts/check_requirements.py requirements.txt

Exit 0 when every ``name==version`` line is installed at that version and the packages they
need (their ``Requires-Dist`` without extras, markers evaluated) are installed at a matching
version; exit 1 and one line naming the first few that are not, so that `make install` runs
``pip install -r``. Other requirement forms (ranges, URLs, options) are left to pip: the script
answers "not installed" for them. Reads installed metadata only, which is much faster than
``pip install --dry-run``.
"""
import re
import sys
from importlib import metadata

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _dependency_problems(name: str) -> list:
    """Unmet ``Requires-Dist`` entries of an installed distribution (empty if unknowable)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: the pins alone are checked
        return []
    problems = []
    for text in metadata.requires(name) or ():
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        installed = _version(requirement.name)
        if installed is None or (requirement.specifier and not requirement.specifier.contains(installed, prereleases=True)):
            problems.append(f"{requirement} (for {name}; installed: {installed or 'none'})")
    return problems


def problems(requirements_file: str) -> list:
    found = []
    with open(requirements_file) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = PIN.match(line)
            if not match:
                found.append(f"{line} (not a name==version pin)")
                continue
            name, wanted = match.groups()
            installed = _version(name)
            if installed != wanted:
                found.append(f"{name}=={wanted} (installed: {installed or 'none'})")
            else:
                found += _dependency_problems(name)
    return found


def main(argv) -> int:
    if len(argv) != 2:
        print("usage: check_requirements.py REQUIREMENTS.txt", file=sys.stderr)
        return 2
    missing = problems(argv[1])
    if missing:
        print(f"requirements: {len(missing)} not installed as pinned: {'; '.join(missing[:3])}"
              + (" ..." if len(missing) > 3 else ""))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
