"""Sessions for the endoscope monorepo.

Plain ``nox`` runs every package's tests, the integration tests, lint and the type
check. ``nox -s build`` builds wheels, ``nox -s demo`` runs the main job, ``nox -s
bench`` the overhead benchmark and ``nox -s pins`` lists the test pins that are behind
the newest release.

Every third-party package is installed under ``testing/constraints.txt`` (exact
versions), so a run resolves the same versions on any day. The torch-based packages
share one environment (``.nox/torch-3.11``, this tree's packages installed editable),
built by the first session that needs it and reused until the constraints or a
``pyproject.toml`` change (delete the folder to force a rebuild): torch alone is
about 750 MB, and six copies of it made a fresh run slow and large; the stdlib-only packages share one small environment per
interpreter (``tests-stdlib``). ``nox -s tests-<name>`` still tests one package alone.

Adding a package is one line in ``PACKAGES``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ROOT / "testing" / "constraints.txt"
TORCH = "torch==2.13.0"  # the CPU wheel on disk; any other request pulls gigabytes
TEST_DEPS = ("pytest", "pytest-timeout")
# Test-only tools of the shared torch environment (versions in CONSTRAINTS).
TORCH_TOOLS = ("numpy", "mypy", "nnsight")
STDLIB_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
TORCH_PYTHON = "3.11"
TORCH_ENV = ROOT / ".nox" / f"torch-{TORCH_PYTHON}"

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_existing_virtualenvs = False


@dataclass(frozen=True)
class Package:
    """One distribution under ``packages/``.

    Attributes:
        name: directory under ``packages/``; the import name is ``endoscope_<name>``
            (``endoscope`` for the meta-package).
        torch: whether the package needs torch (tested in the shared torch
            environment on ``TORCH_PYTHON`` only).
        siblings: other endoscope packages it depends on, installed from this tree.
        extras: optional extras installed for its tests.
        test_deps: extra test-only requirements.
    """

    name: str
    torch: bool = False
    siblings: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    test_deps: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return ROOT / "packages" / self.name

    @property
    def distribution(self) -> str:
        return "endoscope" if self.name == "endoscope" else f"endoscope-{self.name}"

    @property
    def requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.path}{extras}"


# The package table: one line per distribution, in dependency order.
PACKAGES: tuple[Package, ...] = (
    Package("tracing", test_deps=("ipython",)),
    Package("interleaver", extras=("greenlet",)),
    Package("source"),
    Package("cache", torch=True),
    Package(
        "envoy",
        torch=True,
        siblings=("tracing", "interleaver", "source", "cache"),
        extras=("greenlet",),
    ),
    Package("endoscope", torch=True, siblings=("envoy",), extras=("plot",)),
    Package("ray", torch=True, siblings=("cache", "endoscope"), extras=("datasets", "data")),
)
STDLIB_PACKAGES = tuple(p for p in PACKAGES if not p.torch)
TORCH_PACKAGES = tuple(p for p in PACKAGES if p.torch)


def _use_pyenv_interpreters() -> None:
    """Make every installed pyenv 3.10-3.13 resolvable as ``python3.X``.

    Only 3.11 is active on the project's machines (pyenv's shim even exports
    ``PYENV_VERSION=3.11.7`` to nox); without this nox would skip, or with
    ``CI=true`` fail on, the other interpreters.
    """
    if shutil.which("pyenv") is None:
        return
    try:
        installed = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return
    current = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    for minor in STDLIB_PYTHONS:
        if any(v.startswith(minor + ".") for v in current):
            continue
        matches = sorted(
            (v for v in installed if v.startswith(minor + ".") and v.replace(".", "").isdigit()),
            key=lambda v: tuple(int(p) for p in v.split(".")),
        )
        if matches:
            current.append(matches[-1])
    if current:
        os.environ["PYENV_VERSION"] = ":".join(current)


_use_pyenv_interpreters()


def _by_name(name: str) -> Package:
    for package in PACKAGES:
        if package.name == name:
            return package
    raise KeyError(name)


def _with_siblings(packages: tuple[Package, ...] | list[Package]) -> list[Package]:
    """The packages and every sibling they depend on, dependencies first."""
    wanted: dict[str, Package] = {}

    def add(package: Package) -> None:
        for sibling in package.siblings:
            add(_by_name(sibling))
        wanted.setdefault(package.name, package)

    for package in packages:
        add(package)
    return list(wanted.values())


def _pip_install(session: nox.Session, *args: str, python: str | None = None) -> None:
    """Install under the constraints file, into the session's env or ``python``'s."""
    if python is None:
        session.install("-c", str(CONSTRAINTS), *args)
    else:
        session.run(
            python, "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), *args, external=True
        )


# This tree's packages are installed without build isolation, so that their build
# backend is pinned too: hatchling and, for editable installs, editables.
BUILD_DEPS = ("hatchling", "editables")


def _check_pinned(session: nox.Session, python: str | None = None) -> None:
    """Fail if the environment holds a third-party package the constraints do not pin."""
    command = [str(ROOT / "testing" / "check_pinned.py"), str(CONSTRAINTS)]
    if python is None:
        session.run("python", *command)
    else:
        session.run(python, *command, external=True)


def _install_stdlib(session: nox.Session, packages: list[Package]) -> None:
    """Install stdlib-only packages (never torch) and their test tools."""
    _pip_install(session, *BUILD_DEPS)
    requirements = [*TEST_DEPS]
    for package in _with_siblings(packages):
        requirements += ["-e", package.requirement, *package.test_deps]
    _pip_install(session, "--no-build-isolation", *requirements)
    _check_pinned(session)


def _torch_env_key() -> str:
    """What the shared environment was built from: when it changes, rebuild."""
    digest = hashlib.sha256()
    digest.update(CONSTRAINTS.read_bytes())
    digest.update(repr((TORCH, TEST_DEPS, TORCH_TOOLS, PACKAGES)).encode())
    for package in PACKAGES:
        digest.update((package.path / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def _torch_python(session: nox.Session) -> str:
    """The interpreter of the shared torch environment, built on first use.

    The environment holds every package of this tree as an editable install, so
    source edits need no reinstall; a change to the constraints or to any
    ``pyproject.toml`` rebuilds it from scratch. Its stamp is written last, so an
    interrupted build is rebuilt too.
    """
    python = TORCH_ENV / "bin" / "python"
    stamp = TORCH_ENV / "endoscope-env-key"
    key = _torch_env_key()
    if stamp.is_file() and stamp.read_text() == key and python.is_file():
        session.log(f"Reusing the shared torch environment {TORCH_ENV}")
        return str(python)
    if TORCH_ENV.exists():
        shutil.rmtree(TORCH_ENV)
    interpreter = shutil.which(f"python{TORCH_PYTHON}")
    if interpreter is None:
        session.error(f"python{TORCH_PYTHON} not found: the torch packages are tested on it")
    session.log(f"Building the shared torch environment {TORCH_ENV}")
    session.run(
        sys.executable, "-m", "virtualenv", "--quiet", "-p", interpreter, str(TORCH_ENV),
        external=True,
    )  # fmt: skip
    _pip_install(session, *BUILD_DEPS, python=str(python))
    requirements = [TORCH, *TEST_DEPS, *TORCH_TOOLS]
    for package in PACKAGES:
        requirements += ["-e", package.requirement, *package.test_deps]
    _pip_install(session, "--no-build-isolation", *requirements, python=str(python))
    _check_pinned(session, str(python))
    stamp.write_text(key)
    return str(python)


def _pytest(session: nox.Session, python: str | None, package: Package) -> None:
    command = [
        "-m", "pytest", str(package.path / "tests"), f"--rootdir={package.path}",
        "-p", "no:cacheprovider", *session.posargs,
    ]  # fmt: skip
    if python is None:
        session.run("python", *command)
    else:
        session.run(python, *command, external=True)


def _make_stdlib_session(package: Package) -> None:
    def tests(session: nox.Session) -> None:
        _install_stdlib(session, [package])
        _pytest(session, None, package)

    tests.__doc__ = f"Run the {package.distribution} tests (stdlib only, no torch)."
    # Plain `nox` runs these through tests-stdlib, one environment per interpreter.
    nox.session(name=f"tests-{package.name}", python=list(STDLIB_PYTHONS), default=False)(tests)


def _make_torch_session(package: Package) -> None:
    def tests(session: nox.Session) -> None:
        _pytest(session, _torch_python(session), package)

    tests.__doc__ = f"Run the {package.distribution} tests in the shared torch environment."
    nox.session(name=f"tests-{package.name}", venv_backend="none")(tests)


for _package in PACKAGES:
    (_make_torch_session if _package.torch else _make_stdlib_session)(_package)


@nox.session(name="tests-stdlib", python=list(STDLIB_PYTHONS))
def tests_stdlib(session: nox.Session) -> None:
    """Run the tests of every stdlib-only package in one environment (no torch)."""
    _install_stdlib(session, list(STDLIB_PACKAGES))
    for package in STDLIB_PACKAGES:
        _pytest(session, None, package)


@nox.session(venv_backend="none")
def integration(session: nox.Session) -> None:
    """Run the cross-package tests in integration_tests/ against every package."""
    session.run(
        _torch_python(session), "-m", "pytest", "integration_tests", "-p", "no:cacheprovider",
        *session.posargs, external=True,
    )  # fmt: skip


@nox.session(python=TORCH_PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    _pip_install(session, "ruff")
    _check_pinned(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """Type-check every package's sources with mypy."""
    python = _torch_python(session)
    for package in PACKAGES:
        session.run(python, "-m", "mypy", str(package.path / "src"), external=True)


@nox.session(python=TORCH_PYTHON, default=False)
def build(session: nox.Session) -> None:
    """Build a wheel of every package into dist/."""
    _pip_install(session, "build")
    for package in PACKAGES:
        session.run(
            "python", "-m", "build", "--wheel", "--outdir", str(ROOT / "dist"), str(package.path)
        )


@nox.session(python=TORCH_PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """Run the main job on the shipped demo model: ``python -m endoscope demo``.

    Installs the meta-package as a user would (not editable, only what it needs);
    options after ``--`` go to the demo, e.g. ``nox -s demo -- --out results/``.
    """
    packages = [p.requirement for p in _with_siblings([_by_name("endoscope")])]
    _pip_install(session, *BUILD_DEPS)
    _pip_install(session, "--no-build-isolation", TORCH, *packages)
    _check_pinned(session)
    session.run("python", "-m", "endoscope", "demo", *session.posargs)


@nox.session(venv_backend="none", default=False)
def bench(session: nox.Session) -> None:
    """Run the overhead benchmark against nnsight 0.8.1 and plain torch hooks.

    Writes the picture to ``benchmarks/out/overhead.png``; options after ``--``
    replace the defaults (``--compare nnsight --clock cpu``), e.g. ``--quick``.
    """
    args = session.posargs or ["--compare", "nnsight", "--clock", "cpu"]
    session.run(
        _torch_python(session), str(ROOT / "benchmarks" / "overhead.py"), *args, external=True
    )


@nox.session(venv_backend="none", default=False)
def pins(session: nox.Session) -> None:
    """List the pins of testing/constraints.txt that are behind the newest release."""
    session.run(
        sys.executable, str(ROOT / "testing" / "outdated.py"), str(CONSTRAINTS), external=True
    )
