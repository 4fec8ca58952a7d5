"""A loopback Hugging Face Hub for tests: the HTTP endpoints huggingface_hub 2.4 and datasets call.

    hub = HubServer(token="hf_test", user="tester").start()   # hub.url == "http://127.0.0.1:PORT"
    # point the client at it *before* importing huggingface_hub / datasets:
    #   HF_ENDPOINT=hub.url  HF_HUB_DISABLE_XET=1
    hub.requests   # every request: method, path, query, headers (names lower-cased), json body
    hub.unknown    # requests no route matched (answered 404 "hubserver: no route ...") or that
                   # crashed the server (answered 501, which the client does not retry)
    hub.settings_refused.add("tester/x")   # its settings can't be changed (403), as for a token
                                           # without the right to manage the repo
    hub.stop()

Storage is in memory. A new repo starts with one commit holding `.gitattributes`. Regular files
travel base64 inside the NDJSON commit; LFS files (big, or matching `.gitattributes`) go through
the LFS batch API, a PUT to a one-time upload URL (no auth, like a presigned S3 URL) and verify,
as on the real Hub without Xet. Reads of public repos work without a token; a wrong token is a
401 everywhere; writes need the right token and the user's (or an org's) namespace. A repo's
visibility (`private` in its info) is set at creation and changed through its settings.
"""

import base64
import fnmatch
import hashlib
import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

log = logging.getLogger("hubserver")

LFS_THRESHOLD = 10 * 1024 * 1024  # bytes: bigger files go to LFS whatever their name
LFS_PATTERNS = ("*.bin", "*.safetensors", "*.parquet", "*.arrow", "*.pt", "*.pth", "*.gguf",
                "*.h5", "*.onnx", "*.model", "*.zip", "*.tar.*", "*.npy", "*tfevents*")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PREFIX_TYPE = {prefix: repo_type for repo_type, prefix in URL_PREFIX.items()}
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Entry:
    content: bytes
    sha256: str | None = None  # set for LFS files

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\n"
                f"oid sha256:{self.sha256}\nsize {len(self.content)}\n").encode()

    @property
    def blob_id(self) -> str:  # git's sha1 of the blob: the pointer file for LFS files
        blob = self.pointer if self.sha256 else self.content
        return hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    date: str
    parent: str | None
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: list[Commit] = field(default_factory=list)  # oldest first; one branch, "main"

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "refs/heads/main"):
            return self.head
        if len(revision) >= 7:
            return next((c for c in reversed(self.commits) if c.oid.startswith(revision)), None)
        return None

    def history(self, commit: Commit) -> list[Commit]:
        """Commits from the first one up to `commit`, oldest first."""
        return self.commits[: self.commits.index(commit) + 1]


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubServer:
    """The Hub's state plus a ThreadingHTTPServer on 127.0.0.1 that serves it."""

    def __init__(self, token: str, user: str = "tester", orgs: tuple[str, ...] = (), port: int = 0):
        self.token, self.user, self.orgs, self.port = token, user, tuple(orgs), port
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo_type, "owner/name") -> Repo
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.uploads: dict[str, tuple[str, int]] = {}  # one-time upload ticket -> (sha256, size)
        self.requests: list[dict] = []
        self.unknown: list[str] = []
        self.settings_refused: set[str] = set()  # repo ids whose settings PUT answers 403
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HubServer":
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.daemon_threads = True
        httpd.hub = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="hubserver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # For tests

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def requests_to(self, method: str, path_part: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and path_part in r["path"]]

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"

    # Access

    def authed(self, headers) -> bool:
        """True for the right token, False for none; a wrong token is a 401 right away."""
        auth = headers.get("Authorization")
        if auth is None:
            return False
        if auth != f"Bearer {self.token}":
            raise HttpError(401, "Invalid credentials in Authorization header")
        return True

    def get_repo(self, repo_type: str, repo_id: str, headers, write: bool = False) -> Repo:
        authed = self.authed(headers)
        if write and not authed:
            raise HttpError(401, "You must be authenticated to write to this repo")
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):  # the Hub hides private repos
            raise HttpError(404 if authed else 401, "Repository not found", "RepoNotFound")
        if write and repo_id.split("/")[0] not in (self.user, *self.orgs):
            raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def new_commit(self, repo: Repo, title: str, message: str, files: dict[str, Entry]) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        state = sorted((p, e.blob_id) for p, e in files.items())
        seed = json.dumps([parent, title, len(repo.commits), state]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), title, message, _now(), parent, files)
        repo.commits.append(commit)
        return commit


def _revision(repo: Repo, revision: str) -> Commit:
    commit = repo.at(unquote(revision))
    if commit is None:
        raise HttpError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
    return commit


def _last_commits(repo: Repo, commit: Commit) -> dict[str, Commit]:
    """path (file or folder) -> the last commit up to `commit` that changed it."""
    last: dict[str, Commit] = {}
    before: dict[str, Entry] = {}
    for c in repo.history(commit):
        for path in {p for p in set(before) | set(c.files) if before.get(p) != c.files.get(p)}:
            parts = path.split("/")
            for i in range(1, len(parts) + 1):
                last["/".join(parts[:i])] = c
        before = c.files
    return last


def _entries(commit: Commit) -> dict[str, dict]:
    """Every file and folder of a commit as the tree API shows them, by path."""
    out: dict[str, dict] = {}
    for path, entry in commit.files.items():
        size = len(entry.content)
        out[path] = {"type": "file", "oid": entry.blob_id, "size": size, "path": path}
        if entry.sha256:
            pointer_size = len(entry.pointer)
            out[path]["lfs"] = {"oid": entry.sha256, "size": size, "pointerSize": pointer_size}
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            oid = hashlib.sha1(folder.encode()).hexdigest()
            out.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
    return out


def _with_last_commit(item: dict, last: dict[str, Commit]) -> dict:
    c = last.get(item["path"])
    return {**item, "lastCommit": {"id": c.oid, "title": c.title, "date": c.date}} if c else item


def _is_lfs(commit: Commit, path: str, size: int) -> bool:
    if size > LFS_THRESHOLD:
        return True
    attributes = commit.files.get(".gitattributes")
    for line in (attributes.content.decode() if attributes else "").splitlines():
        pattern, _, rest = line.partition(" ")
        name = path if "/" in pattern else path.rsplit("/", 1)[-1]
        if "filter=lfs" in rest and fnmatch.fnmatch(name, pattern):
            return True
    return False


def _front_matter(text: str) -> dict | None:
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("the YAML front matter must be a mapping")
    return data


API_REPO = r"^/api/(?P<type>model|dataset|space)s/(?P<id>[^/]+/[^/]+)"
GIT_REPO = r"^/(?P<prefix>datasets/|spaces/|)(?P<id>[^/]+/[^/]+)\.git/info/lfs/objects"
RESOLVE = r"(?P<id>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
ROUTES = [  # (method, regex on the raw path, handler); first match wins; HEAD routes as GET
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/repos/create$", "create"),
    ("DELETE", r"^/api/repos/delete$", "delete"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("GET", API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "info"),
    ("GET", API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", API_REPO + r"/refs$", "refs"),
    ("PUT", API_REPO + r"/settings$", "settings"),
    ("GET", API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits"),
    ("POST", API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", GIT_REPO + r"/batch$", "lfs_batch"),
    ("POST", GIT_REPO + r"/verify$", "lfs_verify"),
    ("PUT", r"^/_lfs_upload/(?P<ticket>[0-9a-f]+)$", "lfs_put"),
    ("GET", r"^/(?P<prefix>datasets/|spaces/)" + RESOLVE, "resolve"),
    ("GET", r"^/(?P<prefix>)" + RESOLVE, "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length

    def log_message(self, format, *args):  # quiet: tests read hub.requests instead
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # Plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):  # streamed uploads
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str):
        hub: HubServer = self.server.hub
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.body = self._read_body()
        self.json = None
        if self.body and "json" in self.headers.get("Content-Type", ""):
            try:
                self.json = json.loads(self.body)
            except ValueError:
                pass
        headers = {k.lower(): v for k, v in self.headers.items()}
        with hub.lock:
            hub.requests.append({"method": method, "path": split.path, "query": self.query,
                                 "headers": headers, "json": self.json})
        head = method == "HEAD"
        for want, pattern, name in ROUTES:
            match = re.match(pattern, split.path)
            if want == ("GET" if head else method) and match:
                handler = getattr(self, "r_" + name)
                try:
                    with hub.lock:
                        status, payload, headers = handler(hub, **match.groupdict())
                except HttpError as e:
                    headers = {"X-Error-Message": e.message}
                    if e.code:
                        headers["X-Error-Code"] = e.code
                    status, payload = e.status, {"error": e.message, **e.extra}
                except Exception as e:  # a bug here: 501 (not retried by the client), in .unknown
                    log.exception("hubserver: %s %s failed", method, self.path)
                    hub.unknown.append(f"{method} {self.path} -> {type(e).__name__}: {e}")
                    status, payload, headers = 501, {"error": f"hubserver crashed: {e!r}"}, {}
                return self._send(status, payload, headers, head)
        hub.unknown.append(f"{method} {self.path}")
        log.warning("hubserver: no route for %s %s", method, self.path)
        self._send(404, {"error": f"hubserver: no route for {method} {split.path}"}, {}, head)

    def _send(self, status: int, payload, headers: dict, head: bool):
        if isinstance(payload, bytes):
            body = payload
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            body = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # Account and repos

    def r_whoami(self, hub: HubServer):
        if not hub.authed(self.headers):
            raise HttpError(401, "Invalid username or password.")
        token = {"displayName": "hubserver", "role": "write"}
        return 200, {"type": "user", "id": "0" * 24, "name": hub.user, "fullname": hub.user,
                     "orgs": [{"type": "org", "name": o} for o in hub.orgs],
                     "auth": {"type": "access_token", "accessToken": token}}, {}

    def r_create(self, hub: HubServer):
        if not hub.authed(self.headers):
            raise HttpError(401, "You must be authenticated to create a repo")
        body = self.json or {}
        repo_type = body.get("type") or "model"
        namespace, name = body.get("organization") or hub.user, body.get("name") or ""
        if namespace not in (hub.user, *hub.orgs):
            raise HttpError(403, f"You can't create a {repo_type} under {namespace}")
        if repo_type not in URL_PREFIX or not REPO_NAME.match(name):
            raise HttpError(400, f"Invalid repo name or type: {repo_type} {name!r}")
        repo_id = f"{namespace}/{name}"
        url = hub.repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in hub.repos:
            raise HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, _now())
        attributes = {".gitattributes": Entry(GITATTRIBUTES.encode())}
        hub.new_commit(repo, "initial commit", "", attributes)
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def r_delete(self, hub: HubServer):
        body = self.json or {}
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or hub.user}/{body.get('name')}"
        hub.get_repo(repo_type, repo_id, self.headers, write=True)
        del hub.repos[(repo_type, repo_id)]
        return 200, {}, {}

    def r_validate_yaml(self, hub: HubServer):
        hub.authed(self.headers)
        try:
            _front_matter((self.json or {}).get("content", ""))
        except (yaml.YAMLError, ValueError) as e:
            errors = [{"message": str(e)}]
            raise HttpError(400, "Invalid metadata", extra={"errors": errors}) from None
        return 200, {"errors": [], "warnings": []}, {}

    def r_info(self, hub: HubServer, type: str, id: str, rev: str | None = None):
        repo = hub.get_repo(type, id, self.headers)
        commit = _revision(repo, rev or "main")
        readme = commit.files.get("README.md")
        blobs = self.query.get("blobs", "").lower() == "true"  # files_metadata=True
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=len(entry.content), blobId=entry.blob_id)
                if entry.sha256:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": len(entry.content),
                                      "pointerSize": len(entry.pointer)}
            siblings.append(sibling)
        info = {"_id": hashlib.sha1(id.encode()).hexdigest()[:24], "id": id,
                "author": id.split("/")[0],
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0,
                "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(len(e.content) for e in commit.files.values())}
        if readme and (card := _front_matter(readme.content.decode())):
            info["cardData"] = card
        if type == "model":
            info["modelId"] = id
        return 200, info, {}

    def r_settings(self, hub: HubServer, type: str, id: str):
        repo = hub.get_repo(type, id, self.headers, write=True)
        if id in hub.settings_refused:
            raise HttpError(403, f"You don't have the rights to change the settings of {id}")
        body = dict(self.json or {})
        visibility = body.pop("visibility", None)  # {"visibility": "private"}, as the client sends
        if body or visibility not in ("public", "private"):
            raise HttpError(400, f"hubserver: only visibility public/private is supported, not "
                                 f"{self.json}")
        repo.private = visibility == "private"
        return 200, {}, {}

    # Reading files and history

    def r_tree(self, hub: HubServer, type: str, id: str, rev: str, path: str | None = None):
        repo = hub.get_repo(type, id, self.headers)
        commit = _revision(repo, rev)
        folder = unquote(path or "").strip("/")
        entries = _entries(commit)
        if folder and entries.get(folder, {}).get("type") != "directory":
            raise HttpError(404, f"{folder} does not exist on {unquote(rev)}", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() == "true"
        prefix = folder + "/" if folder else ""
        items = [e for p, e in sorted(entries.items())
                 if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])]
        if self.query.get("expand", "").lower() == "true":
            last = _last_commits(repo, commit)
            items = [_with_last_commit(e, last) for e in items]
        return 200, items, {}  # one page: no Link header

    def r_paths_info(self, hub: HubServer, type: str, id: str, rev: str):
        repo = hub.get_repo(type, id, self.headers)
        commit = _revision(repo, rev)
        form = parse_qs(self.body.decode())  # form-encoded: paths=a&paths=b&expand=True
        entries = _entries(commit)
        items = [entries[p.strip("/")] for p in form.get("paths", []) if p.strip("/") in entries]
        if form.get("expand", ["False"])[-1].lower() == "true":
            last = _last_commits(repo, commit)
            items = [_with_last_commit(e, last) for e in items]
        return 200, items, {}

    def r_refs(self, hub: HubServer, type: str, id: str):
        repo = hub.get_repo(type, id, self.headers)
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}
        return 200, {"branches": [branch], "converts": [], "tags": [], "pullRequests": []}, {}

    def r_commits(self, hub: HubServer, type: str, id: str, rev: str):
        repo = hub.get_repo(type, id, self.headers)
        history = repo.history(_revision(repo, rev))
        return 200, [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                      "authors": [{"user": hub.user, "avatar": ""}]} for c in reversed(history)], {}

    def r_resolve(self, hub: HubServer, prefix: str, id: str, rev: str, path: str):
        repo = hub.get_repo(PREFIX_TYPE[prefix], id, self.headers)
        commit = _revision(repo, rev)
        entry = commit.files.get(unquote(path))
        if entry is None:
            message = f"{unquote(path)} does not exist on {unquote(rev)}"
            raise HttpError(404, message, "EntryNotFound")
        content, size = entry.content, len(entry.content)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "ETag": f'"{entry.sha256 or entry.blob_id}"'}
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": size})
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not byte_range:
            return 200, content, headers
        first, last = byte_range.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:  # "bytes=-N": the last N bytes
            start, end = max(size - int(last or 0), 0), size - 1
        if start >= size or start > end:
            return 416, b"", {**headers, "Content-Range": f"bytes */{size}"}
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, content[start : end + 1], headers

    # Writing: preupload, LFS, commit

    def r_preupload(self, hub: HubServer, type: str, id: str, rev: str):
        repo = hub.get_repo(type, id, self.headers, write=True)
        commit = _revision(repo, rev)
        files = []
        for f in (self.json or {}).get("files", []):
            mode = "lfs" if _is_lfs(commit, f["path"], int(f["size"])) else "regular"
            old = commit.files.get(f["path"])  # the client skips files whose oid did not change
            oid = None if old is None else old.sha256 or old.blob_id
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": commit.oid}, {}

    def r_lfs_batch(self, hub: HubServer, prefix: str, id: str):
        repo = hub.get_repo(PREFIX_TYPE[prefix], id, self.headers, write=True)
        objects = []
        for obj in (self.json or {}).get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in hub.lfs:  # already stored: no actions, the client skips the upload
                ticket = uuid.uuid4().hex
                hub.uploads[ticket] = (obj["oid"], obj["size"])
                verify = f"{hub.repo_url(repo.repo_type, id)}.git/info/lfs/objects/verify"
                upload = f"{hub.url}/_lfs_upload/{ticket}"
                item["actions"] = {"upload": {"href": upload, "header": {}},
                                   "verify": {"href": verify, "header": {}}}
            objects.append(item)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return 200, body, {"Content-Type": "application/vnd.git-lfs+json"}

    def r_lfs_put(self, hub: HubServer, ticket: str):
        if ticket not in hub.uploads:
            raise HttpError(403, "unknown or used upload URL")
        sha, size = hub.uploads.pop(ticket)
        if hashlib.sha256(self.body).hexdigest() != sha or len(self.body) != size:
            raise HttpError(400, "uploaded content does not match the announced sha256/size")
        hub.lfs[sha] = self.body
        return 200, b"", {}

    def r_lfs_verify(self, hub: HubServer, prefix: str, id: str):
        hub.get_repo(PREFIX_TYPE[prefix], id, self.headers, write=True)
        oid = (self.json or {}).get("oid")
        if oid not in hub.lfs:
            raise HttpError(404, f"LFS object {oid} was not uploaded")
        return 200, {"success": True}, {}

    def r_commit(self, hub: HubServer, type: str, id: str, rev: str):
        repo = hub.get_repo(type, id, self.headers, write=True)
        if self.query.get("create_pr"):
            raise HttpError(400, "hubserver: pull requests are not supported")
        parent = _revision(repo, rev)
        if parent is not repo.head:
            raise HttpError(400, "hubserver: commits go on main only")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]  # NDJSON
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "the commit body must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and not parent.oid.startswith(header["parentCommit"]):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = Entry(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if value["oid"] not in hub.lfs:
                    raise HttpError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                files[path] = Entry(hub.lfs[value["oid"]], value["oid"])
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: e for p, e in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HttpError(400, f"hubserver: unknown commit operation {key!r}")
        title, message = header.get("summary", ""), header.get("description", "")
        commit = hub.new_commit(repo, title, message, files)
        url = f"{hub.repo_url(type, id)}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url,
                     "pullRequestUrl": None, "hookOutput": ""}, {}
