"""The operator's side served for real: a noise thief suspected on the default deployment
(in-memory state) and with Redis is listed, shown and cleared by `same-accounts`, the clear
holds at its next request, the audit trail has both events; the admin API is closed to
clients; one gateway spreads its calls over two Tritons."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from same_harness.data.queries import make_query_set
from tritonclient.utils import InferenceServerException

from same_defense.accounts import KeyStore, RedisStore
from same_defense.accounts.cli import main as accounts_main
from same_defense.accounts.local_redis import LocalRedis
from same_defense.client import SameClient
from same_defense.data import load_dataset, split_dataset
from same_defense.deploy.observability import metric_names_in
from same_defense.gateway.accounting import Authenticator
from same_defense.gateway.options import AccountOptions
from same_defense.gateway.proxy import GatewayServer
from same_defense.gateway.rules import GatewayPolicy
from same_defense.ports import free_port
from same_defense.runtime.inprocess import InProcessSame

from .servers import protected_service, start_server
from .test_monitoring import committed_queries

pytestmark = [pytest.mark.server]
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def digits(tiny_repository):
    manifest = InProcessSame(tiny_repository).manifest
    return split_dataset(load_dataset(manifest["dataset"]), seed=manifest["seed"]).test.images[:32]


@pytest.fixture(scope="module")
def truth(tiny_repository, digits):
    """The victim's own labels for ``digits`` (no policy applied)."""
    return InProcessSame(tiny_repository, policy="monitor").infer(digits).labels


def _operate(tiny_repository, work, digits, truth, redis_url=None):
    """Suspect a noise thief, then list, show and clear it with `same-accounts`; returns
    the CLI's arguments and the audit log's path."""
    keys = KeyStore(work / "keys.json")
    key = {"thief": keys.add("thief")}
    audit_log, token = work / "logs" / "audit.jsonl", work / "admin-token"
    options = AccountOptions(
        keys.path,
        redis_url=redis_url,
        audit_log=audit_log,
        admin_listen="127.0.0.1:0",
        admin_token_file=token,
    )
    with protected_service(tiny_repository, work / "triton.log", options) as service:
        admin = service.gateway.admin.url
        cli = ["--keys", str(keys.path), "--audit-log", str(audit_log)]
        cli += ["--redis", redis_url] if redis_url else ["--admin", admin]
        cli += ["--admin-token-file", str(token)]
        _closed_to_clients(service, admin, key["thief"], token.read_text().strip())
        noise = make_query_set("noise", 64, SHAPE, seed=3)
        with SameClient(service.public_url, api_key=key["thief"]) as thief:
            for start in range(0, 64, 16):
                thief.classify(noise[start : start + 16])
        assert service.gateway.accounts.is_suspected("thief")
        _list_show_clear(cli)
        assert not service.gateway.accounts.is_suspected("thief")
        with SameClient(service.public_url, api_key=key["thief"]) as thief:
            after = thief.classify(digits).labels  # its next request: the true answers
        assert (after == truth).mean() > 0.8
    return cli, audit_log


def _closed_to_clients(service, admin: str, client_key: str, admin_token: str) -> None:
    """A client key opens nothing on the admin API; the public ports have no admin calls."""
    for url, token in (
        (f"{admin}/v1/suspected", client_key),
        (f"{admin}/v1/accounts/thief/clear", client_key),
        (f"http://{service.http_url}/v1/suspected", admin_token),
        (f"http://{service.http_url}/v1/accounts/thief/clear", admin_token),
    ):
        data = b"" if url.endswith("clear") else None
        request = urllib.request.Request(url, data, {"authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (401, 403, 404), url
    with grpcclient.InferenceServerClient(service.public_url) as client:
        with pytest.raises(InferenceServerException, match="unknown or revoked API key"):
            client.get_model_metadata("same", headers={"authorization": f"Bearer {admin_token}"})
    assert service.gateway.admin.port not in (service.gateway.port, service.gateway.http_port)


def _list_show_clear(cli: list[str]) -> None:
    out = _run([*cli, "suspected"])
    assert out.startswith("thief") and "suspected at" in out, out
    shown = json.loads(_run([*cli, "show", "thief"]))
    assert shown["suspected"] and shown["state"]["suspected_at_query"] > 0
    assert "cleared 'thief'" in _run([*cli, "clear", "thief"])
    assert _run([*cli, "suspected"]) == ""


def _run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert accounts_main(argv) == 0
    return out.getvalue()


def _standing(events: list[dict]) -> list[str]:
    """The events, less ``escalated`` (a graded response may raise the tier in between)."""
    return [e["event"] for e in events if e["event"] != "escalated"]


def _events(cli: list[str]) -> list[dict]:
    return [json.loads(line) for line in _run([*cli, "events", "--since", "1h"]).splitlines()]


def test_in_memory_default_operator_sees_and_clears_a_suspicion(
    tiny_repository, tmp_path, digits, truth
):
    cli, audit_log = _operate(tiny_repository, tmp_path, digits, truth)
    events = [e for e in _events(cli) if e["account"] == "thief"]
    assert _standing(events) == ["suspected", "cleared"]
    suspected = events[0]
    assert suspected["distinct"] >= suspected["suspected_at_query"] > 0
    assert suspected["policy"] == "misinformation" and "settings" in suspected
    assert suspected["statistic"]["suspected_at_query"] == suspected["suspected_at_query"]


@pytest.mark.redis
def test_with_redis_operator_sees_and_clears_a_suspicion(tiny_repository, tmp_path, digits, truth):
    redis_server = LocalRedis(tmp_path / "redis").start()
    try:
        cli, audit_log = _operate(tiny_repository, tmp_path, digits, truth, redis_server.url)
        events = [e for e in _events(cli) if e["account"] == "thief"]  # the shared stream
        assert _standing(events) == ["suspected", "cleared"]
        assert events[-1]["by"] == "same-accounts --redis"
        keys = RedisStore(redis_server.url).client.keys("same:acct:*")
        assert keys and all("{" in k for k in keys)  # hash-tagged: one slot per account
    finally:
        redis_server.stop()
    in_file = _events(["--audit-log", str(audit_log)])
    assert _standing([e for e in in_file if e["account"] == "thief"]) == ["suspected"]


def test_one_gateway_spreads_calls_over_two_tritons(tiny_repository, server, tmp_path, digits):
    second = start_server(tiny_repository, tmp_path / "triton-2.log")
    replicas = [server, second]

    def successes() -> list[int]:
        counts = []
        for triton in replicas:
            with grpcclient.InferenceServerClient(triton.grpc_url) as client:
                stats = client.get_inference_statistics("same", as_json=True)
                success = stats["model_stats"][0]["inference_stats"]["success"]
                counts.append(int(success.get("count", 0)))  # JSON omits a zero
        return counts

    try:
        gateway = GatewayServer(
            f"127.0.0.1:{free_port()}",
            ",".join(t.grpc_url for t in replicas),
            GatewayPolicy(),
            auth=Authenticator(anonymous=True),
        ).start()
        try:
            before = successes()
            with SameClient(f"127.0.0.1:{gateway.port}") as client:
                for i in range(10):
                    client.classify(digits[i : i + 1])
            spread = [a - b for a, b in zip(successes(), before, strict=True)]
        finally:
            gateway.stop()
    finally:
        second.stop()
    assert spread == [5, 5], spread  # round robin: every other call on each replica


def test_the_dashboard_names_metrics_a_real_triton_exports(tiny_repository, server, digits):
    """The Triton side of the dashboard's names, scraped from a running server (the
    gateway's side is checked offline against its registry, tests/test_monitoring.py)."""
    with SameClient(server.grpc_url) as client:
        client.classify(digits[:4])
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        exported = metric_names_in(page.read().decode())
    used = set().union(*(metric_names_in(q) for q in committed_queries()))
    triton_side = {n for n in used if not n.startswith("same_gateway")}
    assert triton_side and triton_side <= exported, triton_side - exported
