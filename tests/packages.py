"""Installing a plugin package for a test, as a user would."""

import contextlib
import shutil
import subprocess
import sys


def pip_install_copy(source: str, root) -> str:
    """pip-install a copy of the package at `source` (no network, no build isolation) into `root`/site, as
    `pip install` would into site-packages; the copy keeps build files out of the tree. Returns the
    directory, for sys.path and subprocesses' PYTHONPATH."""
    copy = shutil.copytree(source, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = str(root / "site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            site,
            str(copy),
        ],
        check=True,
    )
    return site


@contextlib.contextmanager
def installed(source: str, root, package: str):
    """:func:`pip_install_copy` with the directory on sys.path while the context lasts; afterwards the
    package's imported modules are forgotten, so that later tests import nothing of it."""
    site = pip_install_copy(source, root)
    sys.path.insert(0, site)
    try:
        yield site
    finally:
        sys.path.remove(site)
        for name in [m for m in sys.modules if m.split(".")[0] == package]:
            del sys.modules[name]
