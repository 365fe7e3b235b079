"""The image rules of docs/security.md, checked on the Dockerfiles (no Docker engine here).

Parsed with ``dockerfile-parse`` (the instruction structure, continuation lines joined);
each rule is a test so a regression names the rule it breaks. The CI workflow
(.github/workflows/e2e.yaml) builds the images for real.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": ROOT / "Dockerfile.operator", "worker": ROOT / "Dockerfile.worker"}
DIGEST_REF = re.compile(r"^[a-z0-9.\-/:]+@sha256:[0-9a-f]{64}$")
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all(self, instruction: str) -> list[str]:
        return [v for s in self.stages for v in s.values(instruction)]


def parse(path: Path) -> Dockerfile:
    with path.open("rb") as f:
        structure = DockerfileParser(fileobj=f).structure
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in structure:
        instruction, value = item["instruction"], item["value"].strip()
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert instruction == "ARG", f"{path.name}: only ARG may come before FROM"
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, value))
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse(DOCKERFILES[request.param])


def _resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)


def test_multi_stage_final_copies_from_build(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    assert len(df.stages) >= 2, f"{name}: expected a build stage and a final stage"
    assert df.final.name is None or df.final.name != "build"
    copies = [v for v in df.final.values("COPY") if v.startswith("--from=build ")]
    assert copies, f"{name}: the final stage must copy its venv from the build stage"
    assert not any("pip install" in r or "pip wheel" in r for r in df.final.values("RUN")), (
        f"{name}: nothing is built or installed in the final stage"
    )


def test_base_images_pinned_by_digest_arg(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    for stage in df.stages:
        if stage.base == "scratch":
            continue
        assert stage.base.startswith("${") or stage.base.startswith("$"), (
            f"{name}: FROM {stage.base} must come from a build ARG (overridable for mirrors)"
        )
        ref = _resolve(stage.base, df.global_args)
        assert DIGEST_REF.match(ref), f"{name}: base image {ref!r} is not pinned by sha256 digest"


def test_both_images_share_one_base() -> None:
    bases = {parse(p).global_args["PYTHON_IMAGE"] for p in DOCKERFILES.values()}
    assert len(bases) == 1, f"update the digest in both Dockerfiles: {bases}"


def test_final_user_is_numeric_non_root(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    users = df.final.values("USER")
    assert users, f"{name}: the final stage sets no USER (would run as root)"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{name}: USER {user!r} must be numeric (PSS)"
    assert all(int(part) != 0 for part in user.split(":")), f"{name}: USER {user} is root"
    assert user == "65532:65532"  # the chart's and the operator's runAsUser


def test_no_healthcheck_and_no_add_from_urls(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    assert not df.all("HEALTHCHECK"), f"{name}: no HEALTHCHECK; Kubernetes probes instead"
    assert not df.all("ADD"), f"{name}: use COPY (ADD fetches URLs and unpacks archives)"
    for run in df.all("RUN"):
        assert not re.search(r"\b(curl|wget)\b", run), f"{name}: no downloads outside pip/apt"


def test_oci_labels(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    labels = " ".join(df.final.values("LABEL"))
    missing = [k for k in OCI_LABELS if f"org.opencontainers.image.{k}=" not in labels]
    assert not missing, f"{name}: OCI labels missing: {missing}"


def test_read_only_root_filesystem_friendly(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    env = " ".join(df.final.values("ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "TMPDIR=/tmp", "HOME=/tmp"):
        assert setting in env, f"{name}: final stage ENV lacks {setting}"
    assert not df.final.values("VOLUME"), f"{name}: volumes come from the pod spec"
    # bytecode is compiled at build time so the read-only image never wants to write it
    assert any("compileall" in r for r in df.all("RUN")), f"{name}: precompile bytecode"


def test_entrypoint_is_the_console_script(dockerfile: tuple[str, Dockerfile]) -> None:
    name, df = dockerfile
    assert df.final.values("ENTRYPOINT") == [f'["sift-{name}"]']


def test_operator_image_never_installs_torch_or_the_worker_extra() -> None:
    df = parse(DOCKERFILES["operator"])
    runs = " ".join(df.all("RUN"))
    assert "'.[operator]'" in runs or '".[operator]"' in runs
    assert "[worker" not in runs
    assert "torch" not in runs.replace("find_spec('torch')", "")
    assert "find_spec('torch') is None" in runs, "the build asserts torch is absent"
    # and the extra itself pulls no torch in (pyproject is the source of truth)
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not [d for d in extras["operator"] if d.startswith(("torch", "sift["))]


def test_worker_variants_weights_and_runtime_needs_are_declared() -> None:
    df = parse(DOCKERFILES["worker"])
    build = next(s for s in df.stages if s.name == "build")
    args = dict(v.partition("=")[::2] for v in build.values("ARG"))
    assert args.get("VARIANT") == "cpu"
    assert "TORCH_INDEX_URL" in args
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    runs = " ".join(build.values("RUN"))
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in runs
    assert "-c constraints.txt" in runs
    assert "torch.version.cuda" in runs, "the build checks the variant's CUDA runtime"
    assert "_scan" in runs, "the build checks the C scan kernel is in the wheel"
    # weights: an empty stage a --build-context replaces; copied into the final image
    weights = next(s for s in df.stages if s.name == "weights")
    assert weights.base == "scratch"
    assert "--from=weights / /opt/sift/weights/" in df.final.values("COPY")
    text = DOCKERFILES["worker"].read_text()
    for need in ("/dev/shm", "--shm-size", "nofile", "--build-context weights="):
        assert need in text, f"Dockerfile.worker comments must document {need}"


def test_dockerignore_keeps_local_state_out() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", "tests", "demo-data", "**/*.safetensors", "*.egg-info"):
        assert entry in lines, f".dockerignore must exclude {entry}"
    # and nothing the images COPY is excluded
    for df in map(parse, DOCKERFILES.values()):
        for copy in df.all("COPY"):
            if copy.startswith("--from="):
                continue
            for src in copy.split()[:-1]:
                assert src not in lines, f"{src} is copied but .dockerignore excludes it"


@pytest.mark.parametrize("script", ["sift-operator", "sift-worker"])
def test_entrypoint_runs_from_the_installed_package(script: str) -> None:
    exe = Path(sys.executable).with_name(script)
    assert exe.exists() or shutil.which(script), f"console script {script} is not installed"
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd="/tmp"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: " + script), proc.stdout[:200]
