"""The operator's side without a Triton: the audit trail, the admin API and `same-accounts`
against it, hash-tagged Redis keys, and the gateway's round robin over Triton replicas."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from same_defense.accounts import AccountService, KeyStore, MemoryStore, RedisStore
from same_defense.accounts.admin import AdminApi, AdminServer, ensure_token
from same_defense.accounts.audit import (
    AuditLog,
    ExpiryWatch,
    key_changes,
    parse_since,
    read_file_events,
    read_stream_events,
)
from same_defense.accounts.cli import main as accounts_main
from same_defense.accounts.local_redis import LocalRedis
from same_defense.core.accounts import AccountSettings, AccountState
from same_defense.gateway.upstream import UpstreamChannels, _RoundRobinCall, upstream_addresses

SETTINGS = AccountSettings(suspicion_ttl_s=60.0)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _suspect(service: AccountService, account: str) -> AccountState:
    """Feed the account exceeding p-values until its test fires."""
    for start in range(0, 2000, 50):
        hashes = [f"{account}-{i}" for i in range(start, start + 50)]
        state = service.record(account, np.full(50, 1e-4), hashes)
        if state is not None and state.suspected_at_query:
            return state
    raise AssertionError("never suspected")


def test_audit_log_writes_rotates_and_reads_back(tmp_path):
    clock = Clock(1_700_000_000.0)
    path = tmp_path / "logs" / "audit.jsonl"
    audit = AuditLog(
        path, gateway="gw-0", settings={"h": 1.0}, policy="reject", max_bytes=1200, clock=clock
    )  # a few events per file, so backups appear (5 kept: the oldest are dropped)
    state = AccountState(queries=40, distinct=30, suspected_at_query=25)
    for i in range(12):
        clock.now += 60
        audit.event("suspected", f"acct{i}", state, suspected_at_query=25)
    audit.close()
    assert list(tmp_path.glob("logs/audit.jsonl.*")), "no rotation happened"
    events = list(read_file_events(path))
    assert [e["account"] for e in events] == [f"acct{i}" for i in range(12)][-len(events) :]
    first = events[0]
    assert first["gateway"] == "gw-0" and first["policy"] == "reject"
    assert first["distinct"] == 30 and first["statistic"]["suspected_at_query"] == 25
    assert first["settings"] == {"h": 1.0} and first["time"].endswith("+00:00")
    later = list(read_file_events(path, since=clock.now - 90))
    assert [e["account"] for e in later] == ["acct10", "acct11"]


def test_since_takes_ages_iso_times_and_epochs():
    now = 1_700_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("30m", now) == now - 1800
    assert parse_since("1700000000") == now
    assert parse_since("2023-11-14T22:13:20") == now  # UTC when no zone is given
    with pytest.raises(ValueError, match="ISO time"):
        parse_since("yesterday")


def test_key_changes_are_derived_from_two_readings():
    before = {"alice": {"sha256": "a"}, "bob": {"sha256": "b"}, "carol": {"sha256": "c"}}
    after = {
        "alice": {"sha256": "a2"},  # new key
        "bob": {"sha256": "b", "revoked": True},
        "dave": {"sha256": "d"},
    }
    assert sorted(key_changes(before, after)) == [
        ("key_added", "alice"),
        ("key_added", "dave"),
        ("key_revoked", "bob"),
        ("key_revoked", "carol"),
    ]


def test_key_store_tells_listeners_what_changed(tmp_path):
    keys = KeyStore(tmp_path / "keys.json")
    keys.add("alice")
    seen = []
    keys.on_change.append(lambda before, after: seen.extend(key_changes(before, after)))
    keys.refresh()  # baseline: no event
    keys.add("bob")
    keys.revoke("alice")
    keys.refresh()
    assert sorted(seen) == [("key_added", "bob"), ("key_revoked", "alice")]


def test_events_name_the_accounts_group_where_the_key_file_has_one(tmp_path):
    groups = {"alice": "acme"}
    audit = AuditLog(tmp_path / "audit.jsonl", gateway="gw", group_of=groups.get)
    audit.event("cleared", "alice")
    audit.event("cleared", "bob")
    audit.close()
    events = list(read_file_events(tmp_path / "audit.jsonl"))
    assert events[0]["group"] == "acme" and "group" not in events[1]


def test_an_expired_suspicion_is_logged_once(tmp_path):
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.jsonl", gateway="gw", clock=clock)
    service = AccountService(SETTINGS, MemoryStore(), clock=clock)
    service.on_suspicion.append(audit.suspected)
    service.store = ExpiryWatch(service.store, SETTINGS, audit, clock)
    _suspect(service, "thief")
    clock.now += 61  # past suspicion_ttl_s
    for i in range(3):
        service.record("thief", np.ones(1), [f"later-{i}"])
    audit.close()
    kinds = [e["event"] for e in read_file_events(tmp_path / "audit.jsonl")]
    # the statistic stayed high, so the next query raises a new alarm
    assert kinds[:2] == ["suspected", "expired"] and kinds.count("expired") == 1


@pytest.fixture
def admin(tmp_path):
    """A gateway's admin API over an in-memory service, as `same-serve` runs it."""
    keys = KeyStore(tmp_path / "keys.json")
    client_key = keys.add("thief")
    audit = AuditLog(tmp_path / "audit.jsonl", gateway="gw")
    service = AccountService(SETTINGS, MemoryStore())
    service.on_suspicion.append(audit.suspected)
    token_file = tmp_path / "admin-token"
    server = AdminServer("127.0.0.1:0", token_file, AdminApi(service, keys, audit)).start()
    cli = ["--admin", server.url, "--admin-token-file", str(token_file)]
    cli += ["--keys", str(keys.path), "--audit-log", str(tmp_path / "audit.jsonl")]
    yield server, service, client_key, cli
    server.stop()
    audit.close()


def _get(url: str, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_api_needs_its_own_token_not_a_client_key(admin, tmp_path):
    server, _, client_key, _ = admin
    assert (tmp_path / "admin-token").stat().st_mode & 0o077 == 0  # owner only
    url = server.url + "/v1/suspected"
    assert _get(url, None) == 401
    assert _get(url, client_key) == 401
    assert _get(url, "x" * 43) == 401
    assert _get(url, ensure_token(tmp_path / "admin-token")) == 200
    assert server.host == "127.0.0.1"


def test_same_accounts_lists_shows_and_clears_through_the_admin_api(admin, capsys):
    server, service, _, cli = admin
    _suspect(service, "thief")
    assert accounts_main([*cli, "suspected"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("thief") and "suspected at" in listed
    assert accounts_main([*cli, "show", "thief"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["suspected"] and shown["state"]["suspected_at_query"] > 0
    assert shown["key"]["revoked"] is False
    assert accounts_main([*cli, "clear", "thief"]) == 0
    assert "cleared 'thief'" in capsys.readouterr().out
    assert not service.is_suspected("thief")  # in force at once: the gateway's own store
    assert accounts_main([*cli, "suspected"]) == 0
    assert capsys.readouterr().out == ""
    assert accounts_main([*cli, "events", "--since", "1h"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["suspected", "cleared"]
    assert events[1]["by"] == "admin-api" and events[1]["statistic"]["suspected_at_query"] > 0


def test_admin_revoke_and_errors(admin, capsys):
    server, _, client_key, cli = admin
    token = ["--admin-token-file", cli[cli.index("--admin-token-file") + 1]]
    assert accounts_main(["--admin", server.url, *token, "show", "nobody"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] is None
    api = server._http.api
    assert api.revoke("thief") == {"account": "thief", "revoked": True}
    assert api.keys.authenticate(client_key) is None
    assert accounts_main(["--admin", "http://127.0.0.1:9", *token, "suspected"]) == 1
    assert "cannot reach the gateway's admin API" in capsys.readouterr().err
    assert accounts_main(["--admin", server.url, "--admin-token-file", "/nonexistent", "show", "a"])
    assert "admin token" in capsys.readouterr().err


def test_round_robin_takes_turns_and_skips_an_unreachable_replica():
    class Down(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

    hits = []

    def replica(name, up=True):
        def call(request, **_):
            if not up:
                raise Down()
            hits.append(name)
            return name

        return call

    rr = _RoundRobinCall([replica("a"), replica("b")])
    assert [rr(b"") for _ in range(4)] == ["a", "b", "a", "b"]
    rr = _RoundRobinCall([replica("a"), replica("b", up=False)])
    assert [rr(b"") for _ in range(4)] == ["a", "a", "a", "a"]
    assert upstream_addresses("h1:1, h2:2") == ["h1:1", "h2:2"]
    assert upstream_addresses("dns:///triton:8001") == ["dns:///triton:8001"]
    channels = UpstreamChannels("127.0.0.1:1,127.0.0.1:2")
    assert len(channels.channels) == 2
    channels.close()


@pytest.mark.redis
def test_redis_keys_carry_hash_tags_and_legacy_keys_are_read_and_migrated(tmp_path, capsys):
    redis_server = LocalRedis(tmp_path / "redis").start()
    try:
        store = RedisStore(redis_server.url)
        store.put("alice", AccountState(queries=3))
        assert store.client.exists("same:acct:{alice}:state")
        legacy = json.dumps(AccountState(queries=7, suspected_at_query=5).to_dict())
        store.client.set("same:acct:bob:state", legacy)
        store.client.sadd("same:acct:bob:seen", "h1")
        assert store.get("bob").queries == 7  # read before the migration
        assert dict((a, s.queries) for a, s in store.accounts()) == {"alice": 3, "bob": 7}
        assert accounts_main(["--redis", redis_server.url, "migrate-keys"]) == 0
        assert "moved 1 account" in capsys.readouterr().out
        assert store.client.exists("same:acct:{bob}:state", "same:acct:{bob}:seen") == 2
        assert not store.client.exists("same:acct:bob:state")
        service = AccountService(SETTINGS, store)
        state = service.record("bob", np.ones(2), ["h1", "h2"])
        assert state.queries == 9 and state.distinct == 1  # h1 was seen before the move
        # `same-accounts --redis`: state and events straight from Redis, no gateway
        assert accounts_main(["--redis", redis_server.url, "clear", "bob"]) == 0
        events = list(read_stream_events(redis_server.url))
        assert [(e["event"], e["account"]) for e in events] == [("cleared", "bob")]
    finally:
        redis_server.stop()


def test_confirm_goes_to_the_service_where_it_has_one(admin, capsys):
    server, service, _, cli = admin
    api = server._http.api
    if not hasattr(service, "confirm"):  # an account test without a graded response
        assert accounts_main([*cli, "confirm", "thief"]) == 1
        assert "nothing to confirm" in capsys.readouterr().err

        def confirm(account: str) -> AccountState:
            state = service.store.get(account)
            service.store.put(account, state)
            return state

        service.confirm = confirm
    _suspect(service, "thief")
    assert accounts_main([*cli, "confirm", "thief"]) == 0
    assert "confirmed 'thief'" in capsys.readouterr().out
    api.audit.close()
    events = [e["event"] for e in read_file_events(api.audit.path)]
    assert events[-1] == "confirmed"
