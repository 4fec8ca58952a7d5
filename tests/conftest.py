"""Shared fixtures.

The block at the top runs before any test module imports huggingface_hub or datasets: both read
HF_ENDPOINT and HF_HUB_DISABLE_XET at import time. It points them at a loopback Hub (started
lazily by the `hub_server` fixture, on a port picked here) and gives the session its own HF_HOME,
so the developer's saved login and caches are never used. It also makes OpenMP's idle threads
wait passively (see builder/__init__.py) before a test module imports torch first.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory):
    """The real embedded gemma-3-270m trained on the first 24 sample FAQ rows (8 steps x 4
    grounded rows, validation at steps 2, 4, 6 and 8) and merged: one run shared by the slow
    tests of training, evaluation and model merging (minutes on 2 CPU cores). Tests that change
    a run copy it first."""
    from pathlib import Path

    from builder.config import load_config
    from builder.training.merge import merge
    from builder.training.sft import train

    try:
        from fixtures import make_prepared
    except ImportError:
        from tests.fixtures import make_prepared

    tmp = tmp_path_factory.mktemp("embedded-run")
    prepared = make_prepared(tmp, 24)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "embedded-cpu.yaml",
                      ["train.max_steps=8", "train.eval_steps=2", "train.batch_size=4",
                       "train.warmup_steps=0", "train.lr=2e-3"])
    run = train(prepared, tmp / "run", cfg, log=lambda *_: None)
    merge(run, log=lambda *_: None)
    return run


# Modules whose tests share the session's trained `embedded_run`: under pytest-xdist they run in
# one worker, so it is trained once
EMBEDDED_RUN_MODULES = {"test_train", "test_evaluate", "test_merge_models"}


def work_group(nodeid):
    """The unit of work `make test` gives one worker: a test module (so its module fixtures,
    tiny models, servers and the app, are built once), or all the modules of the shared
    `embedded_run` together."""
    from pathlib import Path

    module = Path(nodeid.split("::")[0]).stem
    return "embedded_run" if module in EMBEDDED_RUN_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n 2 --dist loadscope` (make test) schedules by `work_group`. (xdist's own
    `xdist_group` mark cannot do it with pytest 9: it renames node ids, which pytest 9 no longer
    lets a plugin do.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_group(nodeid)

    return ByWorkGroup(config, log)


# Fixtures added by other modules go below.
