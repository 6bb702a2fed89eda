"""What a SIGHUP applies and what needs a restart (pteleport.reloading, process._merge_reloadable)."""

from __future__ import annotations

from pteleport.config import parse_config
from pteleport.process import _merge_reloadable
from pteleport.reloading import changes

BASE = {
    "teleport": {"data_dir": "/var/lib/x", "nodename": "n1", "log": {"severity": "INFO"}},
    "auth_service": {"lockout": {"max_attempts": 5}},
    "proxy_service": {"web_listen_addr": "127.0.0.1:3080"},
}


def config(**changes_: dict) -> object:
    doc = {k: {**v} for k, v in BASE.items()}
    for section, values in changes_.items():
        doc.setdefault(section, {}).update(values)
    return parse_config(doc)


def test_nothing_changed_is_nothing_to_do() -> None:
    assert changes(config(), config()) == ([], [])


def test_log_lockout_retention_tokens_and_shutdown_apply_at_once() -> None:
    new = config(
        teleport={"data_dir": "/var/lib/x", "nodename": "n1", "log": {"severity": "DEBUG"}, "shutdown_timeout": "5s"},
        auth_service={"lockout": {"max_attempts": 3}, "audit": {"retention": "7d"},
                      "tokens": ["db:0123456789abcdef0123"]},
    )
    applied, restart = changes(config(), new)
    assert applied == [
        "auth_service.audit.retention",
        "auth_service.lockout.max_attempts",
        "auth_service.tokens",
        "teleport.log.severity",
        "teleport.shutdown_timeout",
    ]
    assert restart == []


def test_listen_addresses_storage_and_names_need_a_restart() -> None:
    new = config(
        proxy_service={"web_listen_addr": "0.0.0.0:443"},
        teleport={"data_dir": "/srv/other", "nodename": "n2", "log": {"severity": "INFO"},
                  "storage": {"type": "postgresql", "conn_string": "dbname=x"}},
    )
    applied, restart = changes(config(), new)
    assert applied == []
    assert restart == [
        "proxy_service.web_listen_addr",
        "teleport.data_dir",
        "teleport.nodename",
        "teleport.storage.conn_string",
        "teleport.storage.type",
    ]


def test_an_agents_databases_apply_but_its_proxy_needs_a_restart() -> None:
    old = parse_config({"db_service": {"enabled": True, "databases": [{"name": "a", "uri": "h:1"}]},
                        "teleport": {"proxy_server": "p:3080", "nodename": "n"}})
    new = parse_config({"db_service": {"enabled": True, "databases": [{"name": "a", "uri": "h:1"},
                                                                      {"name": "b", "uri": "h:2"}]},
                        "teleport": {"proxy_server": "q:3080", "nodename": "n"}})
    assert changes(old, new) == (["db_service.databases"], ["teleport.proxy_server"])
    merged = _merge_reloadable(old, new)
    assert [d.name for d in merged.db_service.databases] == ["a", "b"]  # taken now
    assert merged.teleport.proxy_server == "p:3080"  # kept until a restart
