"""Render the chart with a given Helm and value set; the value sets the tests share."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sift"
GOLDEN = Path(__file__).parent / "golden"
RELEASE, NAMESPACE = "sift", "sift-system"

# name -> values (the golden snapshots, the scanners and the RBAC check use these)
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "ha-monitors": {
        "replicas": 2,
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "operator": {"maxRunningRuns": 4},
        "broker": {"tls": {"secretName": "sift-broker-cert"}},
        "image": {"digest": "sha256:" + "0" * 64},
    },
}


@dataclass(frozen=True)
class Helm:
    binary: Path
    major: int
    home: Path  # HELM_CONFIG_HOME / CACHE / DATA live below

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        for what in ("CONFIG", "CACHE", "DATA"):
            env[f"HELM_{what}_HOME"] = str(self.home / what.lower())
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template(
        self, values: Mapping[str, Any], *, include_crds: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            json.dump(values, f)  # JSON is YAML
        try:
            args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", f.name]
            return self.run(*args, *(["--include-crds"] if include_crds else []), check=check)
        finally:
            os.unlink(f.name)

    def render(self, values: Mapping[str, Any], *, include_crds: bool = False) -> list[Obj]:
        return documents(self.template(values, include_crds=include_crds).stdout)


Obj = dict[str, Any]


def documents(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(objs: list[Obj], kind: str) -> Iterator[Obj]:
    return (o for o in objs if o.get("kind") == kind)


def only(objs: list[Obj], kind: str) -> Obj:
    (found,) = list(of_kind(objs, kind))
    return found
