"""pctl against a real cluster (one per module): status, tokens, resources, users, db ls."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.dbenv import SEED_ROLE
from tests.harness import PCTL, Cluster, base_env, find_url, free_port, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("pctl") / "data") as c:
        yield c


def pctl(cluster: Cluster, *args: str, input: str | None = None, **env: str | Path) -> tuple[int, str, str]:
    result = run([PCTL, *args], cluster.env(PTSH_HOME=cluster.data_dir.parent / "no-ptsh", **env), input=input)
    return result.returncode, result.stdout, result.stderr


def ok(cluster: Cluster, *args: str, input: str | None = None) -> str:
    code, out, err = pctl(cluster, *args, input=input)
    assert code == 0, f"pctl {' '.join(args)} -> {code}\n{out}\n{err}"
    return out


# --- status ---------------------------------------------------------------------------------------
def test_status_table(cluster: Cluster) -> None:
    lines = ok(cluster, "status").splitlines()
    assert re.fullmatch(r"Cluster  \S+", lines[0])
    assert re.fullmatch(r"Version  \d+\.\d+\.\d+", lines[1])
    assert lines[2:5] == ["host CA  never updated", "user CA  never updated", "db CA    never updated"]
    assert re.fullmatch(r"CA pin   sha256:[0-9a-f]{64}", lines[5])


def test_status_json_matches_text(cluster: Cluster) -> None:
    doc = json.loads(ok(cluster, "status", "--format", "json"))
    assert doc["ca_pin"] in ok(cluster, "status")
    assert {ca["type"] for ca in doc["cas"]} == {"host", "user", "db"}


def test_config_file_and_identity_flag(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "pteleport.yaml"
    config.write_text(f"teleport:\n  data_dir: {cluster.data_dir}\n")
    env = base_env(PTELEPORT_DATA_DIR=tmp_path / "elsewhere", PTSH_HOME=tmp_path / "h")
    assert run([PCTL, "-c", str(config), "status"], env).returncode == 0
    assert run([PCTL, "--data-dir", str(cluster.data_dir), "status"], env).returncode == 0
    identity = str(cluster.data_dir / "admin-identity.pem")
    assert run([PCTL, "-i", identity, "status"], env).returncode == 0
    down = run([PCTL, "-i", identity, "--auth-server", f"127.0.0.1:{free_port()}", "status"], env)
    assert down.returncode == 5
    assert "cannot reach the cluster" in down.stderr


# --- tokens ---------------------------------------------------------------------------------------
def test_tokens_add_text_prints_only_the_token(cluster: Cluster) -> None:
    out = ok(cluster, "tokens", "add", "--type=db", "--format=text")
    assert re.fullmatch(r"[0-9a-f]{32}\n", out)


def test_tokens_add_default_output_is_ready_to_run(cluster: Cluster) -> None:
    out = ok(cluster, "tokens", "add", "--type=db", "--db-name=pg1", "--db-uri=pg.internal:5432")
    token = re.search(r"The invite token: ([0-9a-f]{32})", out).group(1)
    pin = json.loads(ok(cluster, "status", "--format", "json"))["ca_pin"]
    assert "This token will expire in 30 minutes." in out
    assert "> pctl auth sign --format=db --host=pg.internal --out=server --ttl=2190h\n" in out
    assert (
        f"> pteleport db configure create \\\n   --token={token} \\\n   --ca-pin={pin} \\\n"
        f"   --proxy={cluster.addr} \\\n   --name=pg1 \\\n   --protocol=postgres \\\n   --uri=pg.internal:5432 \\\n"
        "   --ca-cert-file=server.cas \\\n"
        "   --output file:///etc/pteleport.yaml\n\n> pteleport start -c /etc/pteleport.yaml\n"
    ) in out
    placeholders = ok(cluster, "tokens", "add", "--type=db", "--ttl=1h")
    assert "This token will expire in 60 minutes." in placeholders
    assert "--name=example \\" in placeholders and "--uri=example.db:5432 \\" in placeholders


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_tokens_add_structured(cluster: Cluster, fmt: str) -> None:
    out = ok(cluster, "tokens", "add", "--type=db", "--value=my-chosen-token-" + fmt, "--format", fmt)
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert set(doc) == {"token", "id", "roles", "expires", "scope"}
    assert doc["token"] == "my-chosen-token-" + fmt
    assert doc["id"] == hashlib.sha256(doc["token"].encode()).hexdigest()[:16]
    assert doc["roles"] == ["Db"]
    assert doc["scope"] is None
    scoped = ok(cluster, "tokens", "add", "--type=db", "--db-name=aurora,billing", "--labels=env=prod", "--format", fmt)
    doc = json.loads(scoped) if fmt == "json" else yaml.safe_load(scoped)
    assert doc["scope"] == {"db_names": ["aurora", "billing"], "db_labels": {"env": ["prod"]}}


def test_tokens_add_says_whether_the_token_is_scoped(cluster: Cluster) -> None:
    unscoped = ok(cluster, "tokens", "add", "--type=db")
    assert "This token is not scoped" in unscoped and "--db-name" in unscoped
    scoped = ok(cluster, "tokens", "add", "--type=db", "--db-name=aurora", "--labels=env=prod")
    assert "may serve only\n    the database(s) aurora and only while labelled env=prod." in scoped
    assert "--name=aurora" in scoped


def test_tokens_ls_and_rm(cluster: Cluster) -> None:
    token = ok(cluster, "tokens", "add", "--type=db", "--format=text", "--labels=env=dev").strip()
    token_id = hashlib.sha256(token.encode()).hexdigest()[:16]
    table = ok(cluster, "tokens", "ls")
    assert table.splitlines()[0].split() == ["Token", "ID", "Type", "Labels", "Expiry", "Time", "(UTC)"]
    row = next(line for line in table.splitlines() if line.startswith(token_id))
    assert re.search(r"Db\s+env=dev\s+\d\d \w\w\w \d\d \d\d:\d\d UTC \(\d+m\d+s\)", row), row
    listed = ok(cluster, "tokens", "ls", "--format=text").split()
    assert token_id in listed and token not in listed
    docs = json.loads(ok(cluster, "tokens", "ls", "--format=json"))
    assert any(d["metadata"]["name"] == token_id for d in docs)
    assert token not in json.dumps(docs) and token not in ok(cluster, "get", "tokens")
    assert ok(cluster, "tokens", "rm", token) == f"Token {token} has been deleted\n"
    assert token_id not in ok(cluster, "tokens", "ls")
    code, _out, err = pctl(cluster, "tokens", "rm", token)
    assert code == 1 and "no token has this value or id" in err
    # ... or by its id, as pctl tokens ls shows it
    other = ok(cluster, "tokens", "add", "--type=db", "--format=text").strip()
    other_id = hashlib.sha256(other.encode()).hexdigest()[:16]
    assert ok(cluster, "tokens", "rm", other_id) == f"Token {other_id} has been deleted\n"
    assert other_id not in ok(cluster, "tokens", "ls")


def test_a_listed_token_cannot_be_created_again(cluster: Cluster) -> None:
    """`pctl get tokens` shows ids; fed back to `pctl create`, they are refused, not made into tokens."""
    ok(cluster, "tokens", "add", "--type=db", "--format=text")
    exported = ok(cluster, "get", "tokens")
    code, _out, err = pctl(cluster, "create", "-f", input=exported)
    assert code == 1 and "looks like a token id" in err, err
    assert len(err.strip().splitlines()) == 1
    short = "kind: token\nversion: v2\nmetadata: {name: tooshort}\nspec: {roles: [Db]}\n"
    code, _out, err = pctl(cluster, "create", input=short)
    assert code == 1 and "at least 16 characters" in err, err
    fine = "kind: token\nversion: v2\nmetadata: {name: a-long-enough-secret-value}\nspec: {roles: [Db]}\n"
    assert ok(cluster, "create", input=fine) == "token has been created\n"
    fine_id = hashlib.sha256(b"a-long-enough-secret-value").hexdigest()[:16]
    assert fine_id in ok(cluster, "tokens", "ls", "--format=text").split()
    assert "a-long-enough-secret-value" not in ok(cluster, "get", "tokens")
    ok(cluster, "tokens", "rm", fine_id)


def test_tokens_bad_input(cluster: Cluster) -> None:
    code, _out, err = pctl(cluster, "tokens", "add", "--type=db", "--value=only-15-chars-x")
    assert code == 1 and "at least 16 characters" in err, err
    code, _out, err = pctl(cluster, "tokens", "add", "--type=spaceship")
    assert code == 1 and 'unknown token type "spaceship"' in err
    code, _out, err = pctl(cluster, "tokens", "add", "--type=db", "--ttl=soon")  # flag values of the wrong form
    assert code == 2 and "is not a duration" in err
    code, _out, err = pctl(cluster, "tokens", "add", "--type=db", "--labels=novalue")
    assert code == 2 and "KEY=VALUE" in err


def test_tokens_ls_empty(tmp_path: Path) -> None:
    with Cluster(tmp_path / "empty") as fresh:
        assert ok(fresh, "tokens", "ls") == "No active tokens found.\n"


# --- resources ------------------------------------------------------------------------------------
def test_create_from_stdin_get_and_round_trip(cluster: Cluster, tmp_path: Path) -> None:
    assert ok(cluster, "create", input=SEED_ROLE) == 'role "db" has been created\n'
    code, _out, err = pctl(cluster, "create", input=SEED_ROLE)
    assert code == 1 and 'role "db" already exists' in err and "--force" in err
    exported = ok(cluster, "get", "role/db")
    doc = yaml.safe_load(exported)
    assert doc["metadata"]["name"] == "db"
    assert doc["spec"]["allow"]["db_users"] == ["*"]
    path = tmp_path / "db.yaml"
    path.write_text(exported)
    assert ok(cluster, "create", "-f", str(path)) == 'role "db" has been updated\n'
    names = [d["metadata"]["name"] for d in json.loads(ok(cluster, "get", "roles", "--format", "json"))]
    assert {"access", "editor", "auditor", "db"} <= set(names)
    docs = list(yaml.safe_load_all(ok(cluster, "get", "roles")))
    assert len(docs) == len(names)
    table = ok(cluster, "get", "roles", "--format", "text")
    assert table.splitlines()[0].split() == ["Role", "DB", "Labels", "DB", "Users", "DB", "Names"]
    assert re.search(r"^db\s+\*=\*\s+\*\s+\*$", table, re.M)


def test_create_multi_document_and_rm(cluster: Cluster, tmp_path: Path) -> None:
    text = (
        "kind: role\nversion: v7\nmetadata: {name: r1}\nspec: {allow: {db_labels: {env: dev}, db_users: [ro]}}\n"
        "---\n"
        "kind: db\nversion: v3\nmetadata: {name: pg-dyn, labels: {env: dev}}\nspec: {protocol: postgres, "
        "uri: 'pg.internal:5432'}\n"
    )
    path = tmp_path / "two.yaml"
    path.write_text(text)
    assert ok(cluster, "create", str(path)) == 'role "r1" has been created\ndatabase "pg-dyn" has been created\n'
    table = ok(cluster, "get", "db", "--format", "text")
    assert re.search(r"^pg-dyn\s+postgres\s+pg\.internal:5432\s+env=dev", table, re.M), table
    assert ok(cluster, "rm", "db/pg-dyn") == 'database "pg-dyn" has been deleted\n'
    assert ok(cluster, "rm", "role/r1") == 'role "r1" has been deleted\n'
    code, _out, err = pctl(cluster, "get", "role/r1")
    assert code == 1 and 'role "r1" does not exist' in err
    code, _out, err = pctl(cluster, "rm", "role")
    assert code == 2 and "KIND/NAME" in err


def test_unknown_field_names_the_field_and_stores_nothing(cluster: Cluster) -> None:
    text = SEED_ROLE.replace("name: db", "name: typo").replace("db_labels", "db_lables")
    text = "kind: role\nversion: v3\nmetadata: {name: fine}\nspec: {allow: {db_users: [x]}}\n---\n" + text
    code, out, err = pctl(cluster, "create", input=text)
    assert code == 1, out
    assert "db_lables" in err
    assert len(err.strip().splitlines()) == 1
    for name in ("typo", "fine"):
        assert pctl(cluster, "get", f"role/{name}")[0] == 1


def test_bad_yaml_names_the_line(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: role\nversion: v3\nmetadata:\n  name: x\n spec: [\n")
    code, _out, err = pctl(cluster, "create", str(path))
    assert code == 1
    assert err.startswith(f"ERROR: {path} line ")
    assert len(err.strip().splitlines()) == 1
    code, _out, err = pctl(cluster, "create", str(tmp_path / "missing.yaml"))
    assert code == 1 and "cannot read" in err
    code, _out, err = pctl(cluster, "create", input="\n")
    assert code == 1 and "holds no resources" in err


def test_get_unknown_kind(cluster: Cluster) -> None:
    code, _out, err = pctl(cluster, "get", "spaceships")
    assert code == 2 and 'unknown resource kind "spaceships"' in err


# --- users ----------------------------------------------------------------------------------------
def test_users_add_ls_update_reset_rm(cluster: Cluster) -> None:
    out = ok(cluster, "users", "add", "--roles=access", "--db-users=alice,ro", "--db-names=app", "ursula")
    lines = out.splitlines()
    assert lines[0] == (
        'User "ursula" has been created but requires a password. Share this URL with the user to complete '
        "user setup, link is valid for 1h:"
    )
    assert re.fullmatch(rf"https://{re.escape(cluster.addr)}/web/invite/[0-9a-f]{{32}}", lines[1])
    assert lines[2] == ""
    assert lines[3] == f"NOTE: Make sure {cluster.addr} points at a pteleport proxy which users can access."
    user = yaml.safe_load(ok(cluster, "get", "user/ursula"))
    assert user["spec"]["traits"] == {"db_users": ["alice", "ro"], "db_names": ["app"]}
    assert re.search(r"^ursula\s+access\s+invited$", ok(cluster, "users", "ls"), re.M)
    assert any(d["metadata"]["name"] == "ursula" for d in json.loads(ok(cluster, "users", "ls", "--format=json")))

    assert ok(cluster, "users", "update", "ursula", "--set-roles=access,editor") == (
        "User ursula has been updated with roles access,editor\n"
    )
    assert re.search(r"^ursula\s+access,editor\s+invited$", ok(cluster, "users", "ls"), re.M)
    code, _out, err = pctl(cluster, "users", "update", "ursula")
    assert code == 2 and "Nothing to update" in err

    reset = ok(cluster, "users", "reset", "ursula", "--ttl=2h")
    assert reset.startswith(
        'User "ursula" has been reset. Share this URL with the user to complete password reset, link is valid for 2h:\n'
    )
    assert "/web/reset/" in find_url(reset)
    token = json.loads(ok(cluster, "users", "reset", "ursula", "--format=json"))
    assert token["kind"] == "user_token" and token["sub_kind"] == "reset" and token["spec"]["user"] == "ursula"

    ok(cluster, "users", "add", "--roles=access", "victor")
    assert ok(cluster, "users", "rm", "ursula,victor") == (
        'User "ursula" has been deleted\nUser "victor" has been deleted\n'
    )
    assert "ursula" not in ok(cluster, "users", "ls")


def test_users_add_json_is_a_user_token(cluster: Cluster) -> None:
    doc = json.loads(ok(cluster, "users", "add", "--roles=access", "walter", "--ttl=30m", "--format=json"))
    assert doc["kind"] == "user_token" and doc["sub_kind"] == "invite" and doc["version"] == "v3"
    assert set(doc["metadata"]) == {"name", "expires"}
    assert doc["spec"]["user"] == "walter"
    assert doc["spec"]["url"].endswith("/web/invite/" + doc["metadata"]["name"])


def test_users_add_bad_input(cluster: Cluster) -> None:
    code, _out, err = pctl(cluster, "users", "add", "xavier")
    assert code == 2 and "--roles" in err
    code, _out, err = pctl(cluster, "users", "add", "--roles=nosuchrole", "xavier")
    assert code == 1 and 'role "nosuchrole" does not exist' in err
    ok(cluster, "users", "add", "--roles=access", "yolanda")
    code, _out, err = pctl(cluster, "users", "add", "--roles=access", "yolanda")
    assert code == 1 and "already exists" in err
    code, _out, err = pctl(cluster, "users", "rm", "nobody")
    assert code == 1 and 'user "nobody" does not exist' in err


# --- db ls ----------------------------------------------------------------------------------------
def test_db_ls_shows_agents_heartbeats(cluster: Cluster) -> None:
    from common.client import ClusterClient, ClusterCredentials
    from common.tls import generate_private_key, private_key_pem, public_key_pem

    headers = ["Host", "Host", "ID", "Name", "Protocol", "URI", "Labels", "Scope"]
    assert ok(cluster, "db", "ls").splitlines()[0].split() == headers
    token = ok(cluster, "tokens", "add", "--type=db", "--format=text", "--db-name=pg1").strip()
    key = generate_private_key()
    with ClusterClient(cluster.addr, insecure=True) as web:
        joined = web.post(
            "/v1/join",
            {"token": token, "hostname": "db-host-1", "public_key": public_key_pem(key).decode()},
        )
    host_id = joined["host_id"]
    creds = ClusterCredentials(joined["cert"].encode(), private_key_pem(key), joined["cas"]["host"].encode())
    database = {
        "kind": "db",
        "version": "v3",
        "metadata": {"name": "pg1", "labels": {"env": "prod"}},
        "spec": {"protocol": "postgres", "uri": "pg1.internal:5432"},
    }
    with ClusterClient(cluster.addr, creds=creds) as agent:
        agent.post("/v1/agents/heartbeat", {"hostname": "db-host-1", "databases": [database]})
    table = ok(cluster, "db", "ls")
    row = rf"^db-host-1\s+{host_id}\s+pg1\s+postgres\s+pg1\.internal:5432\s+env=prod\s+pg1$"
    assert re.search(row, table, re.M), table
    docs = json.loads(ok(cluster, "db", "ls", "--format=json"))
    assert docs[0]["kind"] == "db_server" and docs[0]["spec"]["database"]["metadata"]["name"] == "pg1"
    assert "pg1" in ok(cluster, "get", "db_servers", "--format", "text")


# --- the API itself -------------------------------------------------------------------------------
def test_malformed_json_is_a_400_json_error(cluster: Cluster) -> None:
    import httpx

    for path in ("/v1/login", "/v1/invites/0123456789abcdef"):
        response = httpx.post(
            cluster.url + path, content=b"{not json", verify=False, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["kind"] == "bad_parameter" and error["message"]
    response = httpx.post(
        cluster.url + "/v1/login", json={"user": "a", "password": "b", "public_key": "k", "extra": 1}, verify=False
    )
    assert response.status_code == 400
    assert "extra" in response.json()["error"]["message"]
