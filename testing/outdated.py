"""List the pins of a constraints file that are behind the newest release.

Usage: ``python testing/outdated.py testing/constraints.txt`` (``nox -s pins``).
Asks the package index configured for pip (``pip index versions``) about each pin;
prints one line per pin that is behind and exits 0 either way: raising a pin is a
deliberate change, made by editing its line and running the suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^;\s#]+)\s*(?:;\s*([^#]+?))?\s*(?:#.*)?$")


def pins(path: Path) -> list[tuple[str, str, str]]:
    """Return ``(name, version, marker)`` for every exact pin in ``path``."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            found.append((match[1], match[2], (match[3] or "").strip()))
    return found


def newest(name: str) -> str | None:
    """The newest release of ``name`` the index offers, or None if it cannot say."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"\(([^)]+)\)", result.stdout.splitlines()[0]) if result.stdout else None
    return match[1] if match else None


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("constraints.txt")
    behind = 0
    entries = pins(path)
    for name, version, marker in entries:
        latest = newest(name)
        if latest is None:
            print(f"{name}: the index gave no version (pinned {version})")
        elif latest != version:
            behind += 1
            note = f"  (for {marker})" if marker else ""
            print(f"{name}=={version} -> {latest}{note}")
    print(f"{behind} of {len(entries)} pins are behind the newest release")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
