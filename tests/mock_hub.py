"""A minimal Hugging Face Hub on loopback, files kept in memory: the endpoints that `create_repo` + `upload_folder`
use, and those that downloads (`from_pretrained`, `SentenceTransformer`, `snapshot_download`) use.

Only the network boundary is faked: the real huggingface_hub client talks HTTP to it (HF_ENDPOINT). Files arrive
base64 in the commit because preupload answers "regular" (no LFS / Xet); downloads are plain HTTP.
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockHub:
    """`with MockHub() as hub:` -> `hub.endpoint`; `hub.files[repo_id]` maps uploaded paths to bytes."""

    COMMIT = "a" * 40  # the one revision every repository is at

    def __init__(self, *, refuse_with: int | None = None):
        self.files: dict[str, dict[str, bytes]] = {}
        self.created: list[str] = []
        self.refuse_with = refuse_with  # e.g. 401: every write request is refused with this status
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict | list | None = None, headers: dict | None = None):
                payload = json.dumps({} if body is None else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _stored_file(self) -> bytes | None:
                """`/<org>/<name>/resolve/<revision>/<path>` -> the uploaded bytes, or None."""
                parts = self.path.split("?")[0].split("/")
                if len(parts) > 5 and parts[3] == "resolve":
                    return hub.files.get(f"{parts[1]}/{parts[2]}", {}).get("/".join(parts[5:]))
                return None

            def _send_file(self, content: bytes | None, *, with_body: bool):
                if content is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if with_body:
                    self.wfile.write(content)

            def do_HEAD(self):
                self._send_file(self._stored_file(), with_body=False)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/api/models/") and "/tree/" in path:  # /api/models/<repo>/tree/<rev>[/<folder>]
                    repo_id = "/".join(path.split("/")[3:5])
                    folder = "/".join(path.split("/")[7:])
                    entries = [
                        {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                        for name, content in sorted(hub.files.get(repo_id, {}).items())
                        if not folder or name.startswith(folder + "/")
                    ]
                    if folder and not entries:
                        return self._reply(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})
                    return self._reply(200, entries)
                if path.startswith("/api/models/"):
                    repo_id = "/".join(path.split("/")[3:5])
                    if repo_id in hub.files:
                        return self._reply(
                            200,
                            {
                                "id": repo_id,
                                "modelId": repo_id,
                                "sha": hub.COMMIT,
                                "private": False,
                                "siblings": [{"rfilename": name} for name in sorted(hub.files[repo_id])],
                            },
                        )
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if "/resolve/" in path:
                    return self._send_file(self._stored_file(), with_body=True)
                self._reply(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if hub.refuse_with:
                    return self._reply(hub.refuse_with, {"error": "Invalid credentials in Authorization header"})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = (
                        f"{request['organization']}/{request['name']}"
                        if request.get("organization")
                        else request["name"]
                    )
                    hub.created.append(repo_id)
                    return self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                if "/commit/" in path:
                    repo_id = path.split("/api/models/")[1].split("/commit/")[0]
                    stored = hub.files.setdefault(repo_id, {})
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            stored[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                        elif entry["key"] == "deletedFile":
                            stored.pop(entry["value"]["path"], None)
                        elif entry["key"] == "deletedFolder":
                            folder = entry["value"]["path"].rstrip("/") + "/"
                            for name in [name for name in stored if name.startswith(folder)]:
                                del stored[name]
                    return self._reply(
                        200,
                        {
                            "commitUrl": f"{hub.endpoint}/{repo_id}/commit/1",
                            "commitOid": hub.COMMIT,
                            "pullRequestUrl": None,
                        },
                    )
                return self._reply(404, {"error": f"mock hub: no handler for POST {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
