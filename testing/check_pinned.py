"""Fail when an environment holds a third-party package that is not pinned, or pinned
to another version, in the constraints file.

Usage: ``python testing/check_pinned.py testing/constraints.txt`` with the
environment's own interpreter (the nox sessions run it after every install). This is
what keeps "every test dependency is pinned" true when a package gains a dependency.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from outdated import pins

# Installed by virtualenv itself, not by a session's requirements; and this tree's own.
IGNORED = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    pinned: dict[str, set[str]] = {}
    for name, version, _marker in pins(path):
        pinned.setdefault(canonical(name), set()).add(version)
    problems = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        version = dist.version.split("+")[0]  # torch's "+cpu" local label
        if name in IGNORED or name == "endoscope" or name.startswith("endoscope-"):
            continue
        if name not in pinned:
            problems.append(f"{name}=={version} is installed but not pinned")
        elif version not in pinned[name]:
            wanted = " or ".join(sorted(pinned[name]))
            problems.append(f"{name}=={version} is installed but pinned to {wanted}")
    if problems:
        print(f"{path}: {len(problems)} packages are not pinned as installed:")
        print("\n".join(f"  {line}" for line in sorted(problems)))
        print("Add each as NAME==VERSION to the constraints file (a deliberate change).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
