"""The broker: the operator signs short-lived storage URLs for a run's worker.

The worker holds no storage credential. It asks the broker (HTTPS, in the operator
process, authenticated by its projected ServiceAccount token) for signed URLs of its
run's input and for uploads under its run's output prefix. See ``docs/broker.md``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from sift_operator.broker.auth import PodIndex
from sift_operator.broker.server import Broker, BrokerConfig
from sift_operator.broker.tls import BrokerTLS, load_tls, make_self_signed, service_dns_names
from sift_operator.settings import OperatorSettings

__all__ = ["Broker", "BrokerConfig", "BrokerServer", "BrokerTLS", "broker_tls", "start_broker"]

log = logging.getLogger("sift.broker")


def config_from_settings(settings: OperatorSettings) -> BrokerConfig:
    return BrokerConfig(
        audience=settings.token_audience,
        url_lifetime=timedelta(seconds=settings.broker_url_lifetime_seconds),
        body_limit=settings.broker_body_limit_bytes,
        request_timeout=settings.broker_request_timeout_seconds,
        progress_interval=settings.broker_progress_interval_seconds,
    )


async def broker_tls(settings: OperatorSettings, kube: Any) -> BrokerTLS:
    """The serving chain: a Secret (cert-manager), mounted files, or a fresh private CA."""
    if settings.broker_tls_secret:
        secret = await kube.get("v1", "Secret", settings.namespace, settings.broker_tls_secret)
        if secret is None:
            raise RuntimeError(
                f"broker TLS Secret {settings.namespace}/{settings.broker_tls_secret} not found"
            )
        data = secret.get("data") or {}
        missing = [k for k in ("tls.crt", "tls.key") if k not in data]
        if missing:
            raise RuntimeError(
                f"broker TLS Secret {settings.broker_tls_secret} lacks {', '.join(missing)}"
            )
        cert = base64.b64decode(data["tls.crt"])
        key = base64.b64decode(data["tls.key"])
        ca = base64.b64decode(data["ca.crt"]) if data.get("ca.crt") else cert
        return BrokerTLS(cert, key, ca)
    if settings.broker_tls_cert_file and settings.broker_tls_key_file:
        return load_tls(
            settings.broker_tls_cert_file,
            settings.broker_tls_key_file,
            settings.broker_tls_ca_file,
        )
    return await _managed_tls(settings, kube)


def managed_secret_name(settings: OperatorSettings) -> str:
    return f"{settings.service_name}-broker-tls"


async def _managed_tls(settings: OperatorSettings, kube: Any) -> BrokerTLS:
    """A private CA kept in a Secret of the operator's namespace: every replica and every
    restart serves the same chain, so the CA in running workers' ConfigMaps stays valid."""
    from sift_operator.kube import ApiError

    name = managed_secret_name(settings)
    names = [*service_dns_names(settings.service_name, settings.namespace)]
    names += settings.broker_tls_extra_names
    for _ in range(3):
        secret = await kube.get("v1", "Secret", settings.namespace, name)
        if secret is not None:
            data = secret.get("data") or {}
            if all(k in data for k in ("tls.crt", "tls.key", "ca.crt")):
                return BrokerTLS(
                    *(base64.b64decode(data[k]) for k in ("tls.crt", "tls.key", "ca.crt"))
                )
            raise RuntimeError(f"broker TLS Secret {settings.namespace}/{name} is incomplete")
        made = make_self_signed(names)

        def b64(raw: bytes) -> str:
            return base64.b64encode(raw).decode()

        try:
            await kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {
                        "name": name,
                        "namespace": settings.namespace,
                        "labels": {
                            "app.kubernetes.io/name": "sift",
                            "app.kubernetes.io/component": "broker",
                        },
                    },
                    "data": {
                        "tls.crt": b64(made.cert_pem),
                        "tls.key": b64(made.key_pem),
                        "ca.crt": b64(made.ca_pem),
                    },
                }
            )
            log.info(
                "made the broker's CA and certificate (Secret %s/%s)", settings.namespace, name
            )
            return made
        except ApiError as exc:
            if not exc.already_exists:  # another replica won the race: read its chain
                raise
    raise RuntimeError(f"broker TLS Secret {settings.namespace}/{name}: could not create or read")


@dataclass
class BrokerServer:
    broker: Broker
    runner: web.AppRunner
    port: int
    tls: BrokerTLS

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_broker(
    settings: OperatorSettings,
    kube: Any,
    *,
    tls: BrokerTLS | None = None,
    host: str | None = None,
    port: int | None = None,
    pods: PodIndex | None = None,
) -> BrokerServer:
    """Serve the broker on ``host:port`` (default: the settings) over TLS; ``pods`` is the
    operator's index of its pods (``(namespace, Job name) -> pods``), read to check that a
    token's pod belongs to the run's Job before asking the API."""
    tls = tls or await broker_tls(settings, kube)
    broker = Broker(kube, config_from_settings(settings), pods=pods)
    runner = web.AppRunner(
        broker.app(),
        access_log=None,  # request lines carry query strings (page tokens): none logged
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=75.0,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        host if host is not None else settings.broker_listen_address,
        settings.broker_port if port is None else port,
        ssl_context=tls.server_context(),
        backlog=256,
    )
    await site.start()
    bound = port or settings.broker_port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = int(server.sockets[0].getsockname()[1])
    log.info("broker listening on port %d (TLS)", bound)
    return BrokerServer(broker, runner, bound, tls)
