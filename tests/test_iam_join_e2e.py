"""IAM joining end to end: a real cluster, real agents, and a fake STS that checks SigV4.

The cluster runs with ``auth_service.iam_join.sts_endpoint_override`` pointing at the fake
STS (tests/fake_sts.py) and ``PTELEPORT_INSECURE_TEST_MODE=yes``, without which it refuses
to start. The agent signs ``sts:GetCallerIdentity`` for ``sts.us-west-2.amazonaws.com``
with fixed keys; auth forwards the signed request to the fake, which recomputes the
signature from the key's secret and answers with the key's identity.

Accepted (an agent process joins and serves a database), wrong account (the agent stops with
exit 4 and the rule to add), and, with a client built from the agent's own signing code:
a tampered signature, a replayed challenge, a non-STS host, an IAM token used as a secret.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.client import ClusterClient
from common.errors import AccessDenied
from common.tls import generate_private_key, public_key_pem
from pteleport.dbagent.join_iam import signed_identity_request
from tests.dbenv import DbEnv, make_env
from tests.fake_sts import FakeSTS
from tests.harness import PTELEPORT, Cluster, base_env
from tests.pgserver import PgServer

pytestmark = pytest.mark.slow

ACCOUNT = "111111111111"
AGENT_ARN = f"arn:aws:iam::{ACCOUNT}:user/db-agent"
KEY, SECRET = "AKIAIAMJOIN00000001", "iam/join/secret/0123456789abcdefghijklmn"
REGION = "us-west-2"
TEST_MODE = {"PTELEPORT_INSECURE_TEST_MODE": "yes"}


def aws_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in base_env().items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sts() -> Iterator[FakeSTS]:
    fake = FakeSTS(region=REGION).start()
    fake.add_key(KEY, SECRET, AGENT_ARN)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def env(pg: PgServer, sts: FakeSTS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DbEnv]:
    original = Cluster.env
    Cluster.env = lambda self, **extra: original(self, **TEST_MODE, **extra)  # type: ignore[method-assign]
    try:
        config = yaml.safe_dump({"version": "v3", "auth_service": {"iam_join": {"sts_endpoint_override": sts.url}}})
        e = make_env(tmp_path_factory.mktemp("iamjoin"), pg, config=config)
    finally:
        Cluster.env = original  # type: ignore[method-assign]
    try:
        yield e
    finally:
        e.stop()


def agent_config(env: DbEnv, token: str, name: str) -> Path:
    """A database service config (from db configure create) that joins with IAM token ``token``."""
    path = env.root / f"{name}.yaml"
    made = subprocess.run(
        [PTELEPORT, "db", "configure", "create", "--token=unused", f"--proxy={env.cluster.addr}",
         f"--ca-pin={env.pctl_json('status')['ca_pin']}", f"--name={name}", f"--uri=localhost:{env.pg.port}",
         f"--ca-cert-file={env.pg.ca_cert_file}", f"--data-dir={env.root / ('data-' + name)}",
         f"--nodename={name}-agent", f"--output=file://{path}"],
        env=base_env(), capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    doc = yaml.safe_load(path.read_text())
    doc["teleport"]["join_params"] = {"join_method": "iam", "token_name": token}
    path.write_text(yaml.safe_dump(doc))
    return path


def add_iam_token(env: DbEnv, name: str, *allow: str) -> None:
    made = env.pctl("tokens", "add", "--type=db", "--join-method=iam", f"--value={name}", *allow)
    assert made.returncode == 0, made.stderr
    assert f"The IAM join token: {name}" in made.stdout


def test_an_agent_joins_with_its_iam_identity_and_serves(env: DbEnv, sts: FakeSTS) -> None:
    add_iam_token(env, "aws-agents", f"--allow-aws-account={ACCOUNT}", "--allow-aws-arn=arn:aws:iam::*:user/db-*")
    config = agent_config(env, "aws-agents", "iamdb")
    log = env.root / "iamdb.log"
    proc = subprocess.Popen([PTELEPORT, "start", "-c", str(config)], env=aws_env(), stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        env.wait_for_servers("iamdb")
        seen = [r for r in sts.requests if r.action == "GetCallerIdentity"]
        assert seen and seen[-1].verified and seen[-1].outcome == "ok"
        assert seen[-1].headers["host"] == f"sts.{REGION}.amazonaws.com"
        assert "x-teleport-challenge" in seen[-1].signed_headers
        joined = [e for e in env.events(type="instance.join") if e["code"] == "TJ002I" and e.get("method") == "iam"]
        assert joined and joined[-1]["aws_arn"] == AGENT_ARN and joined[-1]["aws_account"] == ACCOUNT
        assert joined[-1]["nodename"] == "iamdb-agent"
    finally:
        proc.terminate()
        proc.wait(20)


def test_an_agent_from_another_account_is_refused_with_the_rule_to_add(env: DbEnv) -> None:
    add_iam_token(env, "other-account", "--allow-aws-account=999999999999")
    config = agent_config(env, "other-account", "elsewhere")
    result = subprocess.run([PTELEPORT, "start", "-c", str(config)], env=aws_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert f'AWS identity {AGENT_ARN} (account {ACCOUNT}) is not allowed by IAM token "other-account"' in out
    failed = [e for e in env.events(type="instance.join") if e["code"] == "TJ002E"]
    assert any("is not allowed by IAM token" in (e.get("error") or "") for e in failed)


# --- a hand-built client: the agent's own signing code, then one thing wrong ---------------------


def join_request(env: DbEnv, token: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name, value in aws_env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    with ClusterClient(env.cluster.addr, insecure=True) as client:
        challenge = client.post("/v1/join/iam/challenge", {})["challenge"]
    return {
        "token": token,
        "role": "Db",
        "hostname": "crafted",
        "public_key": public_key_pem(generate_private_key()).decode(),
        "challenge": challenge,
        "request": signed_identity_request(challenge),
    }


def post_join(env: DbEnv, body: dict[str, Any]) -> dict[str, Any]:
    with ClusterClient(env.cluster.addr, insecure=True) as client:
        return client.post("/v1/join/iam", body)


@pytest.fixture(scope="module")
def crafted_token(env: DbEnv) -> str:
    add_iam_token(env, "crafted-agents", f"--allow-aws-account={ACCOUNT}")
    return "crafted-agents"


def test_a_tampered_signature_is_refused_by_sts(env: DbEnv, sts: FakeSTS, crafted_token: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    body = join_request(env, crafted_token, monkeypatch)
    headers = body["request"]["headers"]
    signature = headers["Authorization"].rsplit("Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    headers["Authorization"] = headers["Authorization"].replace(signature, flipped)
    with pytest.raises(AccessDenied, match=r"AWS STS did not accept the signed identity request \(SignatureDoesNotMatch\)"):
        post_join(env, body)
    assert sts.requests[-1].outcome == "SignatureDoesNotMatch"


def test_a_replayed_challenge_is_refused(env: DbEnv, crafted_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = join_request(env, crafted_token, monkeypatch)
    first = post_join(env, body)
    assert first["host_id"] and first["cert"]
    with pytest.raises(AccessDenied, match="the IAM join challenge is unknown, expired or already used"):
        post_join(env, {**body, "public_key": public_key_pem(generate_private_key()).decode()})


def test_a_request_for_a_host_that_is_not_sts_is_refused_before_it_is_sent(
    env: DbEnv, sts: FakeSTS, crafted_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = join_request(env, crafted_token, monkeypatch)
    before = len(sts.requests)
    body["request"]["url"] = "https://sts.amazonaws.com.evil.example/"
    body["request"]["headers"]["Host"] = "sts.amazonaws.com.evil.example"
    with pytest.raises(AccessDenied, match=r"sts\.amazonaws\.com\.evil\.example is not an AWS STS host"):
        post_join(env, body)
    assert len(sts.requests) == before  # auth never sent it anywhere


def test_a_challenge_outside_the_signed_headers_is_refused(
    env: DbEnv, crafted_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = join_request(env, crafted_token, monkeypatch)
    auth = body["request"]["headers"]["Authorization"]
    body["request"]["headers"]["Authorization"] = auth.replace(";x-teleport-challenge", "")
    with pytest.raises(AccessDenied, match="the challenge header is not among the signed headers"):
        post_join(env, body)


def test_an_iam_token_name_is_not_a_secret_token(env: DbEnv, crafted_token: str) -> None:
    with ClusterClient(env.cluster.addr, insecure=True) as client, pytest.raises(AccessDenied, match="joins by AWS IAM only"):
        client.post("/v1/join", {"token": crafted_token, "role": "Db", "hostname": "x",
                                 "public_key": public_key_pem(generate_private_key()).decode()})


def test_the_sts_override_refuses_to_start_outside_test_mode(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({"version": "v3", "auth_service": {"iam_join": {
        "sts_endpoint_override": "http://127.0.0.1:9"}}}))
    result = subprocess.run([PTELEPORT, "start", "-c", str(config), "--data-dir", str(tmp_path / "data")],
                            env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "auth_service.iam_join.sts_endpoint_override sends IAM join requests to http://127.0.0.1:9" in result.stderr
    assert "PTELEPORT_INSECURE_TEST_MODE=yes" in result.stderr
    assert os.environ.get("PTELEPORT_INSECURE_TEST_MODE") is None
