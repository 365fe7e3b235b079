"""``sift-operator``: run the operator, or print its generated manifests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sift_operator.crd import render_crd_yaml
from sift_operator.reference import render_reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sift-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("crd", help="print the SelectionRun CustomResourceDefinition (YAML)")
    sub.add_parser("reference", help="print the SelectionRun field reference (Markdown)")
    _add_run_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(render_crd_yaml())
    elif args.command == "reference":
        sys.stdout.write(render_reference())
    else:
        return run_operator(args)
    return 0


def _add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run the operator (kopf); settings from SIFT_* environment variables",
        description="Watch SelectionRuns and turn each into a hardened worker Job. "
        "Operator settings come from SIFT_* environment variables (see docs/operator.md).",
    )
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: the whole cluster",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument(
        "--standalone", action="store_true", help="no peering: do not look for other replicas"
    )
    run.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help="kopf peering object for HA (one replica active); default: kopf's default",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; default: random, so exactly one replica is active",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="Prometheus metrics port (0: no metrics server)",
    )
    run.add_argument("--metrics-address", default="0.0.0.0", help="metrics listen address")
    run.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument("--workers", type=int, default=32, help="concurrent reconciles")
    run.add_argument(
        "--resync-seconds", type=float, default=300.0, help="look at every run this often"
    )
    run.add_argument(
        "--retry-max-seconds", type=float, default=120.0, help="longest backoff between retries"
    )
    run.add_argument(
        "--retry-base-seconds", type=float, default=2.0, help="first backoff between retries"
    )
    run.add_argument(
        "--fast", action="store_true", help="short kopf timeouts (tests and benchmarks)"
    )
    run.add_argument("--verbose", "-v", action="store_true", help="kopf's verbose logging")
    run.add_argument("--log-format", choices=("plain", "json", "full"), default="plain")


def run_operator(args: argparse.Namespace) -> int:
    """``sift-operator run``: settings, metrics server, then kopf until a signal stops it."""
    import asyncio
    import contextlib
    import logging
    import random

    import kopf
    from prometheus_client import start_http_server

    from sift_operator import main as operator_main
    from sift_operator.handlers.reconcile import Options
    from sift_operator.metrics import REGISTRY
    from sift_operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"sift-operator run: {exc}", file=sys.stderr)
        return 2
    operator_main.CONFIG.settings = settings
    operator_main.CONFIG.fast = args.fast
    operator_main.CONFIG.peering_mandatory = args.peering is not None and not args.standalone
    operator_main.CONFIG.options = Options(
        retry_base_seconds=args.retry_base_seconds,
        retry_max_seconds=args.retry_max_seconds,
        resync_seconds=args.resync_seconds,
        workers=args.workers,
    )
    log_format = {
        "plain": kopf.LogFormat.PLAIN,
        "json": kopf.LogFormat.JSON,
        "full": kopf.LogFormat.FULL,
    }[args.log_format]
    kopf.configure(verbose=args.verbose, log_format=log_format)
    if not args.verbose:
        # kopf logs every handler call's success at INFO: a line per watch event of every
        # run, Job and Pod. Our own log and Events say what happens; kopf's warnings and
        # errors still come through.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address, registry=REGISTRY)
    priority = args.priority
    if priority is None and not args.standalone:
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    namespaces = list(args.namespace)
    clusterwide = not namespaces
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: kopf has stopped cleanly
        asyncio.run(
            kopf.operator(
                standalone=args.standalone,
                priority=priority,
                peering_name=args.peering,
                liveness_endpoint=args.liveness,
                clusterwide=clusterwide,
                namespaces=namespaces,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
