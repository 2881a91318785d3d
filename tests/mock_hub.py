"""A minimal Hugging Face Hub on loopback: the endpoints `create_repo` + `upload_folder` use, files kept in memory.

Only the network boundary is faked: the real huggingface_hub client talks HTTP to it (HF_ENDPOINT). Files arrive
base64 in the commit because preupload answers "regular" (no LFS / Xet).
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MockHub:
    """`with MockHub() as hub:` -> `hub.endpoint`; `hub.files[repo_id]` maps uploaded paths to bytes."""

    def __init__(self, *, refuse_with: int | None = None):
        self.files: dict[str, dict[str, bytes]] = {}
        self.created: list[str] = []
        self.refuse_with = refuse_with  # e.g. 401: every write request is refused with this status
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                payload = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_HEAD(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()

            def do_GET(self):
                self._reply(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if hub.refuse_with:
                    return self._reply(hub.refuse_with, {"error": "Invalid credentials in Authorization header"})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                    hub.created.append(repo_id)
                    return self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in path:
                    repo_id = path.split("/api/models/")[1].split("/commit/")[0]
                    stored = hub.files.setdefault(repo_id, {})
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            stored[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                    return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/1", "commitOid": "1" * 40,
                                             "pullRequestUrl": None})
                return self._reply(404, {"error": f"mock hub: no handler for POST {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
