"""Shared fixtures.

The block at the top runs before any test module imports huggingface_hub or datasets: both read
HF_ENDPOINT and HF_HUB_DISABLE_XET at import time. It points them at a loopback Hub (started
lazily by the `hub_server` fixture, on a port picked here) and gives the session its own HF_HOME,
so the developer's saved login and caches are never used.
"""

import atexit
import os
import shutil
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
HUB_TOKEN = "hf_loopbackSECRET" + os.urandom(8).hex()  # distinctive, so a leak is easy to grep
HUB_USER = "tester"

os.environ["HF_ENDPOINT"] = HUB_URL
os.environ["HF_HUB_DISABLE_XET"] = "1"  # with hf_xet installed, uploads would go to a Xet CAS
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
HF_HOME = tempfile.mkdtemp(prefix="builder-tests-hf-home-")
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = HF_HOME
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
              "HF_TOKEN_PATH", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402  (env vars above must be set first)


@pytest.fixture(scope="session")
def hub_server():
    """A loopback Hub on HUB_URL (= $HF_ENDPOINT) accepting HUB_TOKEN for user "tester".

    `.url`, `.token`, `.user`; `.requests` records every request (headers included) and
    `.unknown` the ones no route matched. Repos persist for the session: use unique names.
    """
    try:
        from hubserver import HubServer  # tests/ on sys.path (no tests/__init__.py)
    except ImportError:
        from tests.hubserver import HubServer

    server = HubServer(token=HUB_TOKEN, user=HUB_USER, port=HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def hub_login(hub_server, monkeypatch):
    """The loopback Hub, with HF_TOKEN set to its token: for code that finds the token itself
    (the CLI, the app, a subprocess, which inherits HF_ENDPOINT/HF_HOME/HF_TOKEN)."""
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    return hub_server


# Fixtures added by other modules go below.
