"""The outbox of a run whose output is a bucket: built in the staging folder, kept in the bucket.

A run writes its artifacts to a private staging folder and uploads them
(:mod:`sift_worker.dataplane`); the report is built and sent from that same folder,
then ``report/`` (and the filename salt, ``.sift/``) is uploaded next to the other
artifacts, whatever the API answered. ``sift-worker report FILE`` resumes from the
bucket: it downloads ``report/`` through signed GETs under the output prefix
(:meth:`~sift_worker.storage.RunSigner.sign_output_reads`) into a staging folder,
sends what is unacknowledged and uploads ``report/`` again (``state.json``: the
acknowledged chunks). A chunk acknowledged after the last upload is not sent twice:
the API's answer to the create request lists the chunks it holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.dataplane import DataPlane, RemoteOutput
from sift_worker.outputs import atomic_write_bytes
from sift_worker.reporting.outbox import OUTBOX_DIR, OutboxError, chunk_name
from sift_worker.reporting.salt import SALT_DIR, salt_path

__all__ = ["download_outbox", "download_salt", "upload_outbox"]

log = logging.getLogger("sift.reporting")

BUILD_INPUTS = ("selection.csv", "embeddings.npy", "embeddings.txt", "run.json")


def _output(plane: DataPlane) -> RemoteOutput:
    if plane.upload is None:
        raise OutboxError("the run's output is a folder, not a bucket")
    return plane.upload


def _get(out: RemoteOutput, rel: str) -> bytes | None:
    from sift_worker.fetch import ObjectGoneError

    signed = out.signer.sign_output_reads([rel])[0]
    try:
        data: bytes = out.fetcher.get_bytes(signed, out.storage.uri(rel))
    except ObjectGoneError:
        return None
    return data


def _fetch(out: RemoteOutput, folder: Path, rel: str) -> bool:
    data = _get(out, rel)
    if data is None:
        return False
    atomic_write_bytes(folder / rel, data)
    return True


def download_salt(run: SelectionRun, plane: DataPlane) -> None:
    """The datasource's filename salt, if the bucket has one (hashed ids stay stable)."""
    if run.spec.report is None or run.spec.report.share.filenames != "hashed":
        return
    out = _output(plane)
    path = salt_path(plane.output_dir, run.spec.datasource.input)
    _fetch(out, plane.output_dir, path.relative_to(plane.output_dir).as_posix())


def download_outbox(run: SelectionRun, plane: DataPlane) -> bool:
    """``report/`` from the bucket into the staging folder; True if it held an outbox.

    Without ``report/outbox.json`` the outputs the builder reads are downloaded instead
    (a run whose outbox could not be written): the caller builds it.
    """
    out = _output(plane)
    folder = plane.output_dir
    download_salt(run, plane)
    if not _fetch(out, folder, f"{OUTBOX_DIR}/outbox.json"):
        for rel in BUILD_INPUTS:
            if not _fetch(out, folder, rel):
                raise OutboxError(f"{out.storage.uri(rel)}: not found (no finished run here)")
        return False
    manifest = json.loads((folder / OUTBOX_DIR / "outbox.json").read_text(encoding="utf-8"))
    names = ["create.json", "complete.json", *map(chunk_name, range(int(manifest["chunks"])))]
    for name in names:
        if not _fetch(out, folder, f"{OUTBOX_DIR}/{name}"):
            where = out.storage.uri(f"{OUTBOX_DIR}/{name}")
            raise OutboxError(f"{where}: missing from the outbox")
    for name in ("state.json", "local-uid"):
        _fetch(out, folder, f"{OUTBOX_DIR}/{name}")
    return True


def upload_outbox(plane: DataPlane) -> None:
    """``report/`` and the salt (``.sift/``) from the staging folder into the bucket."""
    out = _output(plane)
    out.upload_dir(plane.output_dir, under=(OUTBOX_DIR, SALT_DIR))
