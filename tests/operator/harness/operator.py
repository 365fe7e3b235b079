"""A real ``sift-operator run`` process against the emulator, always stopped by its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

OPERATOR = [sys.executable, "-c", "from sift_operator.cli import main; raise SystemExit(main())"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        verbose: bool = True,
        standalone: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = dict(env or {})
        self.args = args
        self.verbose = verbose
        self.standalone = standalone
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_", "KUBERNETES_"))}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            PYTHONUNBUFFERED="1",
            SIFT_NAMESPACE="sift-system",
            SIFT_RESULTS_API_HOST="127.0.0.1",
            # the operator's broker: loopback only, and a port of its own per process
            SIFT_BROKER_LISTEN_ADDRESS="127.0.0.1",
            SIFT_BROKER_PORT=str(_free_port()),
        )
        env.update(self.env)
        cmd = [
            *OPERATOR,
            "run",
            *(["--standalone"] if self.standalone else []),
            "--fast",
            "--metrics-port",
            "0",
            *(["--verbose"] if self.verbose else []),
            "--resync-seconds",
            "2",
            "--retry-base-seconds",
            "0.3",
            "--retry-max-seconds",
            "1",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (kopf exits gracefully), SIGKILL if it does not."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the operator dies at whatever point it was."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            if not self.alive:
                raise AssertionError(f"operator exited:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"operator never logged {text!r}:\n{self.logs()[-3000:]}")
