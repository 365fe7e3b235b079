"""``sift-worker``: run a SelectionRun manifest on this machine (or inside the Job)."""

from __future__ import annotations

import argparse
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.config import ConfigError, load_manifest, parse_manifest
from sift_worker.logs import setup_logging

if TYPE_CHECKING:
    from sift_worker.dataplane import DataPlane

log = logging.getLogger("sift")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3  # the spec can never run: retrying the pod cannot help (podFailurePolicy)
# `sift-worker report` only (a run whose report is pending still exits 0: docs/reporting.md)
EXIT_REPORT_PENDING = 4  # the API was unreachable: the outbox waits; run `report` again
EXIT_REPORT_REJECTED = 5  # the API refused a request (4xx): fix the token or the spec

DEMO_DATA = Path("demo-data")
DEMO_OUT = Path("demo-out")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--threads", type=int, default=_cpus(), help="torch threads (default: CPUs)")
    p.add_argument("--decode-workers", type=int, default=_cpus(), help="image decode threads")
    p.add_argument("--no-progress-bars", action="store_true", help="log lines instead of bars")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve the worker's counters on this port's /metrics while the run lasts",
    )
    p.add_argument("--metrics-address", default="127.0.0.1", help="address for --metrics-port")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sift-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a SelectionRun manifest")
    run.add_argument("file", type=Path)
    _add_run_options(run)
    val = sub.add_parser("validate", help="validate a manifest and exit")
    val.add_argument("file", type=Path)
    demo = sub.add_parser(
        "demo", help="generate demo images (first time) and run the demo manifest"
    )
    demo.add_argument("--data", type=Path, default=DEMO_DATA, help="demo images folder")
    demo.add_argument("--out", type=Path, default=DEMO_OUT, help="output folder")
    _add_run_options(demo)
    rep = sub.add_parser(
        "report", help="send a finished run's results to spec.report.api (resumes)"
    )
    rep.add_argument("file", type=Path)
    rep.add_argument(
        "--dry-run",
        action="store_true",
        help="write the outbox and print every request that would be sent; send nothing",
    )
    rep.add_argument("--log-format", choices=("text", "json"), default="text")
    recv = sub.add_parser(
        "receiver", help="a local results API that validates and stores what it receives"
    )
    recv.add_argument("--port", type=int, required=True)
    recv.add_argument("--host", default="127.0.0.1")
    recv.add_argument("--token-file", type=Path, required=True)
    recv.add_argument("--store", type=Path, required=True)
    return parser


def demo_manifest(data: Path, out: Path) -> dict[str, Any]:
    """The packaged demo manifest (same as examples/demo.yaml), pointed at ``data``/``out``."""
    text = resources.files("sift_worker").joinpath("demo.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["spec"]["datasource"]["input"]["volume"]["path"] = str(data)
    doc["spec"]["datasource"]["output"]["volume"]["path"] = str(out)
    return doc


def _execute(args: argparse.Namespace) -> int:
    from sift_worker.progress import Progress  # heavy imports only once a run starts
    from sift_worker.run import RunSettings, run_selection

    if args.command == "demo":
        from sift_worker.demo_data import generate_demo_dataset

        if not args.data.exists():
            log.info("generating demo images in %s (first run only)", args.data)
            generate_demo_dataset(args.data)
        source = "demo manifest (examples/demo.yaml)"
        run = parse_manifest(demo_manifest(args.data, args.out), source)
    else:
        source = str(args.file)
        run = load_manifest(args.file)
    bars = False if (args.no_progress_bars or args.log_format == "json") else None
    beats = None
    output = _volume(run, "output")
    if run.spec.report is not None and (output is not None or run.metadata.uid):
        from sift_worker.reporting.heartbeat import Heartbeats

        # a bucket output beats too in a cluster, where the run's uid needs no file
        beats = Heartbeats(run, output, os.environ)
    from sift_worker.broker_client import BrokerProgress, client_from_env

    broker = client_from_env(os.environ)  # a cluster run: progress into the run's status
    to_broker = BrokerProgress(broker) if broker is not None else None

    def listener(stage: str, done: int, total: int | None) -> None:
        for each in (beats, to_broker):
            if each is not None:
                each(stage, done, total)

    def report_in_plane(plane: DataPlane) -> None:
        """Object storage: report while the staging folders still exist (a bucket
        output's outbox is uploaded after; a bucket input's side files are staged)."""
        from sift_worker.dataplane import RemoteInput

        side = plane.input.side_dir if isinstance(plane.input, RemoteInput) else plane.input
        if plane.upload is None:  # a volume output: as below, but with the staged side files
            new_run = not (beats is not None and beats.began_local_run)
            _report_after_run(run, plane.output_dir, source, new_run=new_run, input_dir=side)
        else:
            _report_after_run(
                run, plane.output_dir, source, new_run=True, plane=plane, input_dir=side
            )

    try:
        summary = run_selection(
            run,
            RunSettings(threads=args.threads, decode_workers=args.decode_workers, source=source),
            Progress(bars=bars, listener=listener if beats or to_broker else None),
            after_upload=report_in_plane if run.spec.report is not None else None,
        )
    finally:
        if beats is not None:
            beats.close()
        if to_broker is not None:
            to_broker.close()
    if run.spec.report is not None and output is not None and _volume(run, "input") is not None:
        # all on volumes (else reported in the data plane, above); a local run's
        # heartbeats already made its new uid, else the report makes it
        new_run = not (beats is not None and beats.began_local_run)
        _report_after_run(run, summary.output, source, new_run=new_run)
    log.info(
        "done: selected %d of %d samples (%d corrupt skipped); open %s",
        summary.selected,
        summary.embedded,
        summary.corrupt,
        f"{summary.location.rstrip('/')}/report.html"
        if summary.location
        else summary.output / "report.html",
        extra={"selected": summary.selected, "total": summary.embedded, "corrupt": summary.corrupt},
    )
    return EXIT_OK


def _volume(run: SelectionRun, which: str) -> Path | None:
    loc = getattr(run.spec.datasource, which)
    return Path(loc.volume.path) if loc.volume is not None else None


def _report_after_run(
    run: SelectionRun,
    output: Path,
    source: str,
    *,
    new_run: bool,
    plane: DataPlane | None = None,
    input_dir: Path | None = None,
) -> None:
    """Report a finished run; its results are safe either way, so the exit status stays 0.

    ``plane``: a bucket output; ``output`` is its staging folder, whose ``report/`` is
    uploaded afterwards (docs/reporting.md). ``input_dir``: where side files are read
    (default: the input volume; a bucket input's staged copies).
    """
    from sift_worker.fetch import FetchError
    from sift_worker.reporting import SendResult, report_run, write_termination_message
    from sift_worker.reporting.bucket import download_salt, upload_outbox
    from sift_worker.reporting.outbox import OutboxError
    from sift_worker.storage import StorageError

    where = plane.upload.storage.uri("report/") if plane and plane.upload else output / "report"
    try:
        if plane is not None:
            download_salt(run, plane)
        try:
            side = input_dir if input_dir is not None else _volume(run, "input")
            result = report_run(run, output, side, new_run=new_run)
        finally:
            if plane is not None and (output / "report").is_dir():
                upload_outbox(plane)
    except (OutboxError, OSError, ValueError, FetchError, StorageError) as exc:
        log.error("reporting: the outbox could not be written: %s", exc)
        result = SendResult("Pending", f"the outbox could not be written: {exc}", 0, 0, 0)
    write_termination_message(result)
    if result.reported == "Reported":
        print(f"reporting: done ({result.chunks} chunks)")
    else:
        print(
            f"reporting: {result.reported.lower()} ({result.acked} of {result.chunks} chunks "
            f"acknowledged): {result.reason}; the results are safe in {where}; "
            f"send them with: sift-worker report {source}"
        )


def _report_command(args: argparse.Namespace) -> int:
    run = load_manifest(args.file)
    if run.spec.report is None:
        print(f"{args.file}: spec.report is not set: nothing is sent")
        return EXIT_OK
    from sift_worker.capabilities import unsupported_features

    problems = [p for p in unsupported_features(run) if p.startswith("spec.report")]
    if problems:
        raise ConfigError(str(args.file), problems)
    output = _volume(run, "output")
    if output is None:  # a bucket: resume from its report/ in a staging folder
        from sift_worker.dataplane import open_data_plane

        with open_data_plane(run, lambda: (Path(), Path())) as plane:
            return _report_outbox(args, run, plane.output_dir, plane)
    return _report_outbox(args, run, output, None)


def _report_outbox(
    args: argparse.Namespace, run: SelectionRun, output: Path, plane: DataPlane | None
) -> int:
    from sift_worker.fetch import FetchError
    from sift_worker.reporting import report_run, write_termination_message
    from sift_worker.reporting.bucket import download_outbox, upload_outbox
    from sift_worker.reporting.outbox import Outbox, OutboxError, build_outbox
    from sift_worker.storage import StorageError

    # an outbox already written is what is (or would be) sent: never rebuilt here
    try:
        if plane is not None:
            download_outbox(run, plane)
        outbox = Outbox.open(output) or build_outbox(run, output, _volume(run, "input"))
    except (OutboxError, FetchError, StorageError) as exc:
        log.error("%s: no finished run to report: %s", args.file, exc)
        return EXIT_FAILED
    if args.dry_run:
        print(
            f"# {outbox.api_url}: every request body, as in {outbox.folder} (gzipped on the wire)"
        )
        for method, path, body in outbox.requests():
            print(f"{method} {path}")
            print(body)
        return EXIT_OK
    try:
        result = report_run(run, output, _volume(run, "input"), build=False)
    finally:
        if plane is not None:
            upload_outbox(plane)
    write_termination_message(result)  # a follow-up Job tells the operator the same way
    print(f"reporting: {result.reported} ({result.acked} of {result.chunks} chunks acknowledged)")
    if result.reported == "Reported":
        return EXIT_OK
    log.error("%s", result.reason)
    return EXIT_REPORT_PENDING if result.reported == "Pending" else EXIT_REPORT_REJECTED


def _receiver_command(args: argparse.Namespace) -> int:
    from sift_worker.reporting.receiver import serve

    token = args.token_file.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(str(args.token_file), ["--token-file: the file is empty"])
    log.info("receiver on http://%s:%d storing in %s", args.host, args.port, args.store)
    serve(args.store, token, args.host, args.port)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads must sleep, not spin: spinning torch threads starve the decode
    # threads between batches (+30% throughput with the tiny model on 2 cores). Must be
    # set before torch loads its OpenMP runtime; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_format", "text"))
    try:
        if args.command == "validate":
            run = load_manifest(args.file)
            from sift_worker.capabilities import unsupported_features

            problems = unsupported_features(run)
            if problems:
                raise ConfigError(str(args.file), problems)
            print(f"{args.file}: valid SelectionRun {run.metadata.name!r}")
            return EXIT_OK
        if args.command == "report":
            return _report_command(args)
        if args.command == "receiver":
            return _receiver_command(args)
        stop_metrics = None
        if args.metrics_port is not None:  # a local run's counters (docs/observability.md)
            from sift_worker.fetch import serve_metrics

            try:
                port, stop_metrics = serve_metrics(args.metrics_port, args.metrics_address)
            except OSError as exc:
                log.error("--metrics-port %d: cannot listen: %s", args.metrics_port, exc.strerror)
                return EXIT_CONFIG
            log.info("metrics on http://%s:%d/metrics", args.metrics_address, port)
        try:
            return _execute(args)
        finally:
            if stop_metrics is not None:
                stop_metrics()
    except ConfigError as exc:
        log.error("%s", exc.render(), extra={"problems": exc.problems})
        return EXIT_CONFIG
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_FAILED
    except Exception as exc:
        # storage and fetch errors name the bucket or object (never a signed URL)
        from sift_worker.fetch import EgressRefusedError, FetchError
        from sift_worker.storage import StorageError

        if not isinstance(exc, StorageError | FetchError | EgressRefusedError):
            raise
        log.error("%s", exc, extra={"error": type(exc).__name__})
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
