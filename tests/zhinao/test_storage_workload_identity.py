"""S3 through workload identity: no keys in the pod, the cloud's credential endpoint supplies them.

EKS Pod Identity (and ECS) give the pod AWS_CONTAINER_CREDENTIALS_FULL_URI and a token file; IRSA
gives AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN. Here a local HTTP endpoint plays the credential
agent and hands out the real SeaweedFS server's keys, so the store is proved to authenticate with them.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from zhinao.storage import StorageError, open_store


@pytest.fixture
def credential_agent(s3_server, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("pod-token")
    seen: list[str] = []

    class Agent(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization") or "")
            body = {
                "AccessKeyId": s3_server.access_key,
                "SecretAccessKey": s3_server.secret_key,
                "Token": "",
                "Expiration": "2099-01-01T00:00:00Z",
            }
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Agent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{server.server_port}/creds")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token))
    yield seen
    server.shutdown()


def test_no_keys_and_a_credential_endpoint_reads_and_writes(s3_server, credential_agent):
    store = open_store("s3://wi-bucket/run", endpoint=s3_server.endpoint)
    store.put_bytes("hello.txt", b"hi")
    assert store.get_bytes("hello.txt") == b"hi"
    assert credential_agent and credential_agent[0] == "pod-token"
    s3_server.drop_bucket("wi-bucket")


def test_without_keys_or_identity_the_server_refuses(s3_server, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    store = open_store("s3://wi-bucket/run", endpoint=s3_server.endpoint)
    with pytest.raises(StorageError):
        store.put_bytes("hello.txt", b"hi")
