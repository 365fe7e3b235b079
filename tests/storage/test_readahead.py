"""Read-ahead (sift_worker.readahead) against moto S3 on 127.0.0.1: objects come back
whole and in the wanted order within its bounds, anything but a clean 2xx is left to
the Fetcher (which reports it once), and a decode stream ends its read-ahead."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sift_worker.dataplane import RemoteInput
from sift_worker.fetch import EgressRefusedError, Fetcher, counter_values
from sift_worker.imaging import CorruptImage, decode_for_model
from sift_worker.readahead import ReadAhead
from sift_worker.sources.samples import iter_decoded_samples
from sift_worker.storage import RunSigner, SignedURL
from sift_worker.storage.s3 import S3Storage
from storage_servers import Server, canary_s3_client, set_canary_aws_env


@pytest.fixture
def bucket(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, bytes]]:
    """A fresh bucket with 24 objects of different sizes under ``in/``."""
    set_canary_aws_env(monkeypatch)
    client = canary_s3_client(moto_server.endpoint)
    name = f"ahead-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    bodies = {f"o{i:02d}.bin": bytes([i]) * (1000 + 997 * i) for i in range(24)}
    for key, body in bodies.items():
        client.put_object(Bucket=name, Key=f"in/{key}", Body=body)
    return name, bodies


def _signer(server: Server, bucket: str) -> RunSigner:
    return RunSigner(S3Storage(bucket, "in/", endpoint=server.endpoint))


def _until(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_wanted_objects_arrive_whole_and_within_the_bounds(
    moto_server: Server, bucket: tuple[str, dict[str, bytes]]
) -> None:
    name, bodies = bucket
    signer = _signer(moto_server, name)
    with (
        Fetcher(signer.allowed_hosts()) as fetcher,
        ReadAhead(fetcher, lambda k: signer.sign_inputs([k])[0], transfers=3, ahead=5) as ahead,
    ):
        for key in bodies:
            ahead.want(key)
        ahead.want("o00.bin")  # wanted twice: ignored
        _until(lambda: all(e.done.is_set() for e in ahead._entries.values()) and ahead._entries)
        time.sleep(0.2)  # room for a GET beyond the bound, were it started
        assert list(ahead._entries) == [f"o{i:02d}.bin" for i in range(5)]  # in order, 5 at most
        for key, body in bodies.items():
            got = ahead.take(key)
            if got is None:  # not started when asked for: the caller reads it itself
                got = fetcher.get_bytes(signer.sign_inputs([key])[0])
            assert got == body, key
        assert ahead.taken >= 5
        assert ahead.taken + ahead.direct == len(bodies)
        assert ahead.take("o00.bin") is None  # taken already
        assert ahead._held == 0


def test_a_refill_waits_for_room_then_starts_a_batch(
    moto_server: Server, bucket: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sift_worker.readahead as readahead

    monkeypatch.setattr(readahead, "REFILL", 3)
    name, bodies = bucket
    signer = _signer(moto_server, name)
    keys = list(bodies)
    with (
        Fetcher(signer.allowed_hosts()) as fetcher,
        ReadAhead(fetcher, lambda k: signer.sign_inputs([k])[0], transfers=8, ahead=6) as ahead,
    ):
        for key in keys:
            ahead.want(key)
        _until(
            lambda: (
                len(ahead._entries) == 6 and all(e.done.is_set() for e in ahead._entries.values())
            )
        )
        for key in keys[:2]:
            assert ahead.take(key) == bodies[key]
        time.sleep(0.3)
        assert len(ahead._entries) == 4  # room for 2, not a batch of 3: nothing started
        assert ahead.take(keys[2]) == bodies[keys[2]]
        _until(lambda: len(ahead._entries) == 6)  # the third take started a batch of 3
        assert list(ahead._entries) == keys[3:9]


def test_failures_are_left_to_the_fetcher_which_reports_them_once(
    moto_server: Server, bucket: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    name, bodies = bucket
    signer = _signer(moto_server, name)
    elsewhere = "http://127.0.0.2:9/in/o01.bin?X-Amz-Signature=canary"

    def sign(key: str) -> SignedURL:
        if key == "boom.bin":
            raise RuntimeError("signing failed")
        signed = signer.sign_inputs([key])[0]
        return SignedURL("GET", elsewhere, key, signed.expires_at) if key == "o01.bin" else signed

    with Fetcher(signer.allowed_hosts()) as fetcher, ReadAhead(fetcher, sign) as ahead:
        before = counter_values()["egress_refused"]
        for key in ("missing.bin", "o01.bin", "boom.bin", "o02.bin"):
            ahead.want(key)
        _until(
            lambda: (
                len(ahead._entries) == 4 and all(e.done.is_set() for e in ahead._entries.values())
            )
        )
        assert ahead.take("missing.bin") is None  # 404
        assert ahead.take("o01.bin") is None  # a host off the allowlist: never requested
        assert ahead.take("boom.bin") is None
        assert ahead.take("o02.bin") == bodies["o02.bin"]
        assert counter_values()["egress_refused"] == before  # not counted here ...
        with pytest.raises(EgressRefusedError):
            fetcher.get_bytes(sign("o01.bin"))
        assert counter_values()["egress_refused"] == before + 1  # ... but once, by the Fetcher
        remote = RemoteInput(signer, fetcher, tmp_path / "staging")
        remote.will_read("missing.bin")
        with pytest.raises(CorruptImage, match="vanished"):  # the same answer as without
            remote.read_bytes("missing.bin")
        remote.end_reads()


def test_close_answers_a_waiting_take_and_ignores_later_wants(
    moto_server: Server, bucket: tuple[str, dict[str, bytes]]
) -> None:
    name, bodies = bucket
    signer = _signer(moto_server, name)
    release = threading.Event()

    def slow_sign(key: str) -> SignedURL:
        release.wait(10)
        return signer.sign_inputs([key])[0]

    answers: list[bytes | None] = []
    with Fetcher(signer.allowed_hosts()) as fetcher:
        ahead = ReadAhead(fetcher, slow_sign)
        ahead.want("o03.bin")
        _until(lambda: "o03.bin" in ahead._entries)  # started: its signing is held up
        taker = threading.Thread(target=lambda: answers.append(ahead.take("o03.bin")))
        taker.start()
        time.sleep(0.1)
        assert taker.is_alive()  # waiting for the GET
        closer = threading.Thread(target=ahead.close)
        closer.start()
        release.set()
        closer.join(10)
        taker.join(10)
        assert not closer.is_alive()
        assert not taker.is_alive()
        assert answers in ([None], [bodies["o03.bin"]])
        ahead.want("o04.bin")
        assert ahead.take("o04.bin") is None
        assert not ahead._entries
        ahead.close()  # twice: harmless


def test_a_decode_stream_reads_ahead_and_ends_it(
    moto_server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_canary_aws_env(monkeypatch)
    client = canary_s3_client(moto_server.endpoint)
    name = f"decode-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    rng = np.random.default_rng(1)
    files = []
    for i in range(12):
        path = tmp_path / f"img{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        client.put_object(Bucket=name, Key=f"in/{path.name}", Body=path.read_bytes())
        files.append(path)
    closed: list[tuple[int, int]] = []
    original = ReadAhead.close

    def recording_close(self: ReadAhead) -> None:
        original(self)
        closed.append((self.taken, self.direct))

    monkeypatch.setattr(ReadAhead, "close", recording_close)
    signer = _signer(moto_server, name)
    with Fetcher(signer.allowed_hosts()) as fetcher:
        remote = RemoteInput(signer, fetcher, tmp_path / "staging")
        out = list(iter_decoded_samples(remote, [p.name for p in files], 32, workers=1, window=12))
        assert remote._ahead is None  # the stream ended its read-ahead
    assert [ref.file for ref, _ in out] == [p.name for p in files]
    for (_, item), path in zip(out, files, strict=True):
        assert np.array_equal(item, decode_for_model(path, 32))
    assert len(closed) == 1
    taken, direct = closed[0]
    assert taken + direct == len(files)
    assert taken > 0


def test_the_byte_bound_refills_after_a_few_takes(
    moto_server: Server, bucket: tuple[str, dict[str, bytes]]
) -> None:
    name, bodies = bucket
    signer = _signer(moto_server, name)
    keys = list(bodies)[10:]  # 10-24 kB each
    with (
        Fetcher(signer.allowed_hosts()) as fetcher,
        ReadAhead(
            fetcher, lambda k: signer.sign_inputs([k])[0], transfers=1, ahead=100, max_held=40_000
        ) as ahead,
    ):
        for key in keys:
            ahead.want(key)
        _until(lambda: ahead._full)
        time.sleep(0.2)
        started = list(ahead._entries)
        assert 2 <= len(started) < len(keys)  # stopped at the bytes, far below the count
        assert ahead._held >= 40_000
        for key in started[:2]:
            assert ahead.take(key) == bodies[key]
        # two takes free more than a quarter of the bytes: the next GETs start
        _until(lambda: len(ahead._entries) > len(started) - 2)
        assert list(ahead._entries)[: len(started) - 2] == started[2:]


def test_the_driver_naps_only_while_the_next_objects_to_be_taken_are_ready() -> None:
    """The nap (no wake-up per readable socket) must not hold back the object a decoder
    asks for next: it needs the next LOW_WATER objects, in take order, finished."""
    from sift_worker.readahead import LOW_WATER, _Entry

    def never(name: str) -> SignedURL:
        raise AssertionError(f"nothing is fetched here, not even {name}")

    with Fetcher(["127.0.0.1"]) as fetcher, ReadAhead(fetcher, never) as ahead:
        entries = [_Entry() for _ in range(LOW_WATER + 1)]
        for i, entry in enumerate(entries):
            ahead._entries[f"o{i:02d}"] = entry  # started in this order: taken in it
        assert not ahead._head_ready()  # nothing finished
        for entry in entries[1:]:
            entry.done.set()
        assert not ahead._head_ready()  # all but the one a decoder takes next
        entries[0].done.set()
        assert ahead._head_ready()
        del ahead._entries["o00"]  # taken: LOW_WATER left, all finished
        assert ahead._head_ready()
        del ahead._entries["o01"]  # fewer than LOW_WATER ahead: keep the sockets watched
        assert not ahead._head_ready()
