"""Tell within about a second whether the Hugging Face hub can be reached, so that a hub id on an offline machine
fails at once instead of after huggingface_hub's retries (five, with back-off: about half a minute)."""

from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlsplit

PROBE_SECONDS = 1.0


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """True unless offline mode is set or the hub's endpoint (or the proxy that reaches it) refuses a TCP connection
    within `timeout` seconds; name lookup counts against the same time."""
    from huggingface_hub import constants  # read at call time: HF_ENDPOINT and HF_HUB_OFFLINE as the hub sees them

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlsplit(constants.ENDPOINT)
    proxy = None if urllib.request.proxy_bypass(endpoint.hostname or "") else urllib.request.getproxies().get(endpoint.scheme)
    address = urlsplit(proxy) if proxy else endpoint
    default_port = 443 if address.scheme == "https" else 80
    return _connects(address.hostname or "", address.port or default_port, timeout)


def _connects(host: str, port: int, timeout: float) -> bool:
    """Open and close one connection in a daemon thread, so a hanging name lookup cannot hold the caller."""
    answers: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answers.append(True)
        except OSError:
            answers.append(False)

    thread = threading.Thread(target=attempt, name="att-report-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return answers == [True]
