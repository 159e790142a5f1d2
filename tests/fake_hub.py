"""A local HTTP server that stands in for the Hugging Face Hub in tests.

It speaks the part of the Hub API that `huggingface_hub` uses to create a repository
and a branch, upload a folder (preupload answers "regular", so small files travel
base64 in the commit body), and download files (resolve URLs with the ETag and
commit headers the client checks). It records every request and stores the files
of every commit. It listens on 127.0.0.1 only and stops at the end of the test.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote

COMMIT = "c0ffee" * 6 + "c0ff"  # 40 hex digits


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes


@dataclass
class FakeHub:
    requests: List[Request] = field(default_factory=list)
    repos: Dict[str, Dict[str, Dict[str, bytes]]] = field(default_factory=dict)  # repo -> branch -> files
    private: Dict[str, bool] = field(default_factory=dict)
    fail_with: Optional[Tuple[int, str]] = None  # answer every request with this status and message
    url: str = ""

    def files(self, repo_id: str, branch: str = "main") -> Dict[str, bytes]:
        return self.repos.get(repo_id, {}).get(branch, {})


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _record(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            hub.requests.append(Request(self.command, self.path, dict(self.headers), body))
            return body

        def _send(self, status: int, payload=None, headers: Optional[Dict[str, str]] = None,
                  raw: Optional[bytes] = None) -> None:
            data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _failing(self) -> bool:
            if hub.fail_with is None:
                return False
            status, message = hub.fail_with
            self._send(status, {"error": message}, {"X-Error-Message": message})
            return True

        def do_POST(self) -> None:
            body = self._record()
            if self._failing():
                return
            path = unquote(self.path.split("?")[0])
            if path == "/api/repos/create":
                spec = json.loads(body or b"{}")
                repo_id = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
                hub.repos.setdefault(repo_id, {"main": {}})
                hub.private[repo_id] = bool(spec.get("private")) or spec.get("visibility") == "private"
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":  # the client checks the model card's metadata
                return self._send(200, {"errors": [], "warnings": []})
            parts = path.split("/")  # /api/models/ORG/NAME/<verb>/<revision...>
            if len(parts) < 6 or parts[:3] != ["", "api", "models"]:
                return self._send(404, {"error": f"unknown endpoint {path}"})
            repo_id, verb, revision = "/".join(parts[3:5]), parts[5], "/".join(parts[6:]) or "main"
            if repo_id not in hub.repos:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if verb == "branch":
                hub.repos[repo_id].setdefault(revision, dict(hub.repos[repo_id]["main"]))
                return self._send(200, {})
            if verb == "preupload":
                files = json.loads(body)["files"]
                return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files], "commitOid": COMMIT})
            if verb == "commit":
                if revision not in hub.repos[repo_id]:
                    return self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        hub.repos[repo_id][revision][value["path"]] = base64.b64decode(value["content"])
                return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{COMMIT}", "commitOid": COMMIT,
                                        "pullRequestUrl": None})
            self._send(404, {"error": f"unknown endpoint {path}"})

        def _resolve(self) -> None:
            self._record()
            if self._failing():
                return
            path = unquote(self.path.split("?")[0]).lstrip("/")
            head, _, rest = path.partition("/resolve/")
            revision, _, filename = rest.partition("/")
            data = hub.files(head, revision).get(filename)
            if data is None:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            etag = hashlib.sha256(data).hexdigest()
            self._send(200, raw=data, headers={"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT})

        do_GET = _resolve
        do_HEAD = _resolve

    return Handler


class RunningHub:
    """Context manager: a FakeHub served on a free loopback port."""

    def __enter__(self) -> FakeHub:
        self.hub = FakeHub()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
