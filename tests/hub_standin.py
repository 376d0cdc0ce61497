"""A local stand-in for the Hugging Face Hub's HTTP API: the endpoints huggingface_hub
(2.x) calls for ``create_repo`` and ``create_commit``, nothing else.

- ``POST /api/repos/create`` (name, organization, visibility): records the repo.
- ``POST /api/validate-yaml``: the README's front matter must parse as a YAML mapping.
- ``POST /api/models/{repo}/preupload/{revision}``: each file's upload mode: "lfs" for
  weights and binary samples (as the Hub's ``.gitattributes`` and binary check do),
  "regular" (base64 inline in the commit) for the rest.
- ``POST /{repo}.git/info/lfs/objects/batch``: basic LFS transfer, a PUT URL per object
  and a verify URL; ``PUT /lfs/{oid}`` stores the bytes (its sha256 must be the oid),
  ``POST /{repo}.git/info/lfs/objects/verify`` checks they arrived.
- ``POST /api/models/{repo}/commit/{revision}``: the NDJSON commit; ``file`` entries are
  decoded, ``lfsFile`` entries resolved from the stored LFS objects.
- ``GET /api/agent-harnesses``: an empty registry (the client's best-effort agent
  detection for its user agent).

Anything else answers 404 and is kept in ``unexpected``. Run the client with
``HF_HUB_DISABLE_XET=1``: the Xet protocol (used instead of LFS where ``hf_xet`` is
installed) is not part of the stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".png")


class HubState:
    """What the stand-in received."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # repo id -> create payload
        self.lfs: dict[str, bytes] = {}  # oid -> bytes
        self.commits: list[dict[str, Any]] = []  # {"repo", "header", "files": {path: bytes}}
        self.calls: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    base: str

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload: Any = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization", "").startswith("Bearer hf_"):
            return True
        self._reply(401, {"error": "Invalid credentials"})
        return False

    def do_PUT(self) -> None:
        self.state.calls.append(("PUT", self.path))
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})", self.path)
        data = self._body()
        if not m or hashlib.sha256(data).hexdigest() != m.group(1):
            self.state.unexpected.append(("PUT", self.path))
            return self._reply(400, {"error": "bad LFS upload"})
        self.state.lfs[m.group(1)] = data
        self._reply(200)

    def do_POST(self) -> None:
        self.state.calls.append(("POST", self.path))
        path = self.path.split("?")[0]
        body = self._body()
        if not self._authorized():
            return
        if path == "/api/repos/create":
            return self._create(json.loads(body))
        if path == "/api/validate-yaml":
            return self._validate(json.loads(body))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if m and m.group(1) in self.state.repos:
            if m.group(2) == "preupload":
                return self._preupload(json.loads(body))
            return self._commit(m.group(1), body)
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", path)
        if m and m.group(1) in self.state.repos:
            return self._lfs(m.group(1), m.group(2), json.loads(body))
        self.state.unexpected.append(("POST", self.path))
        self._reply(404, {"error": "Repository not found"})

    def do_GET(self) -> None:
        self.state.calls.append(("GET", self.path))
        if self.path == "/api/agent-harnesses":  # the client's best-effort user-agent lookup
            return self._reply(200, {"standardEnvVars": [], "harnesses": {}})
        self.state.unexpected.append(("GET", self.path))
        self._reply(404, {"error": "not in the stand-in"})

    def _create(self, payload: dict[str, Any]) -> None:
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.state.repos:
            return self._reply(409, {"error": "You already created this model repo"})
        self.state.repos[repo] = payload
        self._reply(200, {"url": f"{self.base}/{repo}", "name": repo})

    def _validate(self, payload: dict[str, Any]) -> None:
        m = re.match(r"^---\n(.*?)\n---\n", payload.get("content", ""), re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as exc:
            return self._reply(400, {"errors": [{"message": str(exc)}]})
        if not isinstance(meta, dict):
            return self._reply(400, {"errors": [{"message": "no YAML metadata"}]})
        self._reply(200, {"errors": [], "warnings": []})

    def _preupload(self, payload: dict[str, Any]) -> None:
        files = []
        for f in payload["files"]:
            binary = b"\0" in base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or binary or f["size"] > 10 << 20
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                 "shouldIgnore": False, "oid": None}
            )  # fmt: skip
        self._reply(200, {"files": files})

    def _lfs(self, repo: str, action: str, payload: dict[str, Any]) -> None:
        if action == "verify":
            ok = self.state.lfs.get(payload["oid"]) is not None
            return self._reply(200 if ok else 404, {})
        objects = [
            {
                "oid": o["oid"], "size": o["size"],
                "actions": {
                    "upload": {"href": f"{self.base}/lfs/{o['oid']}"},
                    "verify": {"href": f"{self.base}/{repo}.git/info/lfs/objects/verify"},
                },
            }
            for o in payload["objects"]
        ]  # fmt: skip
        self._reply(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo: str, body: bytes) -> None:
        entries = [json.loads(line) for line in body.splitlines() if line.strip()]
        files: dict[str, bytes] = {}
        header = None
        for entry in entries:
            key, value = entry["key"], entry["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return self._reply(400, {"error": f"LFS object of {value['path']} missing"})
                files[value["path"]] = data
            else:
                return self._reply(400, {"error": f"unexpected commit entry {key}"})
        oid = hashlib.sha1(body).hexdigest()
        self.state.commits.append({"repo": repo, "header": header, "files": files})
        self._reply(200, {"commitUrl": f"{self.base}/{repo}/commit/{oid}", "commitOid": oid})


class HubStandIn:
    """The stand-in on ``127.0.0.1`` (a free port), served from a thread while open."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.base = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
