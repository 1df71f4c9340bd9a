"""KeepAliveServer: several requests per connection, each turned into the WSGI call werkzeug would make."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest
from werkzeug.wrappers import Request, Response

from tests.fakes.keepalive import KeepAliveServer


def echo(environ, start_response):
    """Reply with what the request carried, as JSON."""
    request = Request(environ)
    payload = {
        "method": request.method,
        "path": request.path,
        "query": request.args.to_dict(),
        "form": request.form.to_dict(),
        "authorization": request.headers.get("Authorization"),
    }
    return Response(json.dumps(payload), content_type="application/json")(environ, start_response)


@pytest.fixture
def server() -> Iterator[KeepAliveServer]:
    server = KeepAliveServer("127.0.0.1", 0, echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.close_connections()
    thread.join(timeout=5)


def connect(server: KeepAliveServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)


def test_connection_serves_many_requests(server: KeepAliveServer) -> None:
    connection = connect(server)
    replies = []
    for number in range(3):
        body = f"To=%2B1415555010{number}&Body=caf%C3%A9"
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic dGVzdA=="}
        connection.request("POST", f"/2010-04-01/Messages.json?page={number}", body=body, headers=headers)
        reply = connection.getresponse()
        replies.append((reply.status, reply.will_close, json.loads(reply.read())))
    connection.close()

    assert [status for status, _, _ in replies] == [200, 200, 200]
    assert [will_close for _, will_close, _ in replies] == [False, False, False]
    assert replies[2][2] == {
        "method": "POST",
        "path": "/2010-04-01/Messages.json",
        "query": {"page": "2"},
        "form": {"To": "+14155550102", "Body": "café"},
        "authorization": "Basic dGVzdA==",
    }
    assert server.connections_accepted == 1


def test_chunked_body_rejected(server: KeepAliveServer) -> None:
    connection = connect(server)

    connection.request("POST", "/upload", body=iter([b"To=1"]), encode_chunked=True)
    reply = connection.getresponse()

    assert reply.status == 411
    assert reply.will_close is True
    connection.close()


def test_closed_connections_serve_nothing(server: KeepAliveServer) -> None:
    connection = connect(server)
    connection.request("GET", "/first")
    connection.getresponse().read()

    server.close_connections()

    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        connection.request("GET", "/second")
        connection.getresponse()
    connection.close()


def test_application_error_replies_500(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(environ, start_response):
        raise RuntimeError("stand-in bug")

    server = KeepAliveServer("127.0.0.1", 0, failing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    connection = connect(server)

    connection.request("GET", "/anything")
    reply = connection.getresponse()
    status, will_close = reply.status, reply.will_close
    connection.close()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)

    assert status == 500
    assert will_close is True
    assert "RuntimeError: stand-in bug" in capsys.readouterr().err
