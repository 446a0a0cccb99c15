"""Is the Hub reachable? One quick TCP probe before a download, so an unreachable Hub fails in ~1 s.

huggingface_hub retries a failed connection with backoff (about 30 s in all) before it gives up;
for a model that is not cached on a machine with no route to the Hub, that is 30 s of silence
before the same answer. A connect to HF_ENDPOINT's host with a short timeout tells first. The
probe is skipped when a proxy is configured (the proxy, not the host, must be reachable then)
and when HF_HUB_OFFLINE is set (huggingface_hub then fails at once by itself). A reachable
answer is remembered for a minute, an unreachable one is not (the network may come back).
"""
from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = float(os.environ.get("ZOO_PROBE_TIMEOUT", "1.0"))
_reachable_until: dict[str, float] = {}


def _proxied() -> bool:
    return any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                               "all_proxy"))


def _connect(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def unreachable_reason(endpoint: str | None = None) -> str | None:
    """None if the endpoint accepts a TCP connection (or cannot be probed), else why not."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _proxied():
        return None
    endpoint = endpoint or constants.ENDPOINT
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = f"{parts.hostname}:{port}"
    if _reachable_until.get(key, 0) > time.monotonic():
        return None
    # DNS lookups can hang far past any socket timeout: run the whole probe under one deadline
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_connect, parts.hostname, port, PROBE_TIMEOUT_S).result(timeout=PROBE_TIMEOUT_S + 0.2)
    except Exception as error:  # noqa: BLE001 - any failure to connect is the answer
        return f"{endpoint} is unreachable ({type(error).__name__}: {str(error) or 'timed out'})"
    finally:
        pool.shutdown(wait=False)
    _reachable_until[key] = time.monotonic() + 60
    return None
