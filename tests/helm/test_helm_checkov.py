"""checkov scans every rendered value set; what it still finds is listed, with its
reason, in checkov-skips.yaml, and nothing else may be found."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from chart import VALUE_SETS, Helm

SKIPS = Path(__file__).parent / "checkov-skips.yaml"

pytestmark = pytest.mark.slow


def test_checkov_finds_only_the_justified_skips(helm4: Helm, checkov: Path, tmp_path: Path) -> None:
    files = []
    for name, values in VALUE_SETS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(helm4.template(values, include_crds=True).stdout)
        files.append(str(path))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(checkov), "--framework", "kubernetes", "--skip-download", "-o", "json"]
        + [arg for f in files for arg in ("-f", f)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: findings
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    found: dict[str, set[str]] = {}
    passed = 0
    for report in reports:
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        for check in results.get("failed_checks", []):
            found.setdefault(check["check_id"], set()).add(
                f"{check['resource']} ({check['check_name']})"
            )
    assert passed > 50, "checkov checked (almost) nothing: is the output format unchanged?"
    skips = yaml.safe_load(SKIPS.read_text())
    assert all(entry.get("reason") for entry in skips.values()), "every skip needs a reason"
    unlisted = {k: sorted(v) for k, v in found.items() if k not in skips}
    assert not unlisted, f"new checkov findings (fix, or justify in {SKIPS.name}): {unlisted}"
    stale = sorted(set(skips) - set(found))
    assert not stale, f"stale skips in {SKIPS.name} (checkov passes them now): {stale}"
