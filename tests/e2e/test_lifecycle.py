"""The daemon's life as a service: one daemon per state dir, stop requests at any moment, SIGHUP."""

import json
import signal
import threading

import pytest

from tests.harness.daemon import SMARTPOS, run_cli, wait_payment
from tests.harness.procs import wait_until

pytestmark = pytest.mark.pcscd


def test_a_second_daemon_on_the_same_state_dir_is_refused_and_leaves_the_first_alone(pos_stack):
    """A technician's `smartpos run` beside the running service stops at once with one line; before, it resolved
    the service's payment in progress as interrupted, deleted its api.json and (with port 0) served beside it."""
    stack = pos_stack
    stack.start_daemon()
    api_file = stack.state_dir / "api.json"
    with stack.api() as client:
        waiting = client.post("/v1/payments", json={"type": "sale", "amount_minor": 700, "currency": "EUR"},
                              headers={"Idempotency-Key": "first"}).json()  # fmt: skip
        second = run_cli([*SMARTPOS, "run"], env=stack.daemon_env, timeout=30)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"another smartpos daemon (pid {stack.daemon.pid}) is running on state dir" in second.stderr
        assert json.loads(api_file.read_text())["pid"] == stack.daemon.pid
        assert client.get(f"/v1/payments/{waiting['id']}").json()["state"] == "waiting_for_card"
        stack.tap("visa")
        assert wait_payment(client, waiting["id"], "approved", "failed", "declined")["state"] == "approved"

        # SIGHUP (the technician's SSH session closed): a clean stop, as for SIGTERM.
        hung = client.post("/v1/payments", json={"type": "sale", "amount_minor": 800, "currency": "EUR"},
                           headers={"Idempotency-Key": "second"}).json()  # fmt: skip
    assert stack.kill_daemon(signal.SIGHUP) == 0
    assert not api_file.exists()
    stack.start_daemon()  # the lock went with the process
    with stack.api() as client:
        assert client.get(f"/v1/payments/{hung['id']}").json()["state"] == "cancelled"


def test_a_stop_requested_while_the_api_is_being_built_ends_the_daemon(pos_stack, monkeypatch):
    """SIGTERM in the moment between start-up and the API server's creation: before, the stop found no server
    to end, the server then started anyway (READY after STOPPING, a dead payment worker, further SIGTERMs
    ignored) and only SIGKILL ended the daemon."""
    from config.loading import load_settings
    from terminal.daemon import Daemon

    stack = pos_stack
    for key, value in stack.pcscd.env.items():
        monkeypatch.setenv(key, value)
    sent = []

    class Recorder:
        active = True

        def send(self, message):
            sent.append(message)

        def ready(self, status=""):
            sent.append("READY=1")

        def stopping(self):
            sent.append("STOPPING=1")

    daemon = Daemon(load_settings(stack.config_path)[0], notifier=Recorder())
    try:
        daemon.start()
        daemon.request_stop("SIGTERM")
        wait_until(lambda: not any(t.name == "stopper" for t in threading.enumerate()), timeout=20,
                   what="the stop to finish its drain")  # fmt: skip
        serving = threading.Thread(target=daemon.serve, daemon=True)
        serving.start()
        serving.join(10)
        assert not serving.is_alive(), "the API served after the stop"
        assert sent == ["STOPPING=1"]
    finally:
        if daemon._server is not None:
            daemon._server.should_exit = True
        daemon.flow and daemon.flow.shutdown(timeout=5)
        daemon.close()
