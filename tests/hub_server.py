"""A small Hugging Face Hub-compatible HTTP server for offline tests.

It implements the endpoints that ``huggingface_hub`` and ``datasets`` call to
create a repo, upload (preupload, LFS batch + basic transfer, NDJSON commit),
read (repo info, tree, paths-info, resolve with ranges), and manage refs
(refs, tags), with git-like commits, branches and tags, tokens with roles
(``write``, ``read``, ``fineGrained``), organizations, and the Hub's error
headers (``X-Error-Code``). Point the real clients at it with ``HF_ENDPOINT``
(read by ``huggingface_hub`` at import time) and ``HF_HUB_DISABLE_XET=1``.

Fault injection for failure tests: ``server.fail("POST", r"/commit/", status=500, times=2, skip=1)``
lets one matching request through, then answers the next two with that status; ``server.requests``
logs every request as ``(method, path, status)``.

Usage::

    server = HubServer().start()
    server.add_user("me", token="hf_write", orgs={"lab": "write"})
    os.environ["HF_ENDPOINT"] = server.url
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".safetensors", ".bin", ".zip", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclasses.dataclass
class FileEntry:
    size: int
    blob_oid: str
    lfs_sha256: Optional[str] = None  # content is in HubState.lfs when set, else in HubState.blobs[blob_oid]


@dataclasses.dataclass
class Commit:
    oid: str
    parent: Optional[str]
    files: Dict[str, FileEntry]
    title: str
    date: str


@dataclasses.dataclass
class Repo:
    kind: str
    repo_id: str
    private: bool
    created: str
    commits: Dict[str, Commit] = dataclasses.field(default_factory=dict)
    branches: Dict[str, str] = dataclasses.field(default_factory=dict)
    tags: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def resolve(self, revision: str) -> Optional[Commit]:
        revision = unquote(revision)
        for table in (self.branches, self.tags):
            if revision in table:
                return self.commits[table[revision]]
        for prefix in ("refs/heads/", "refs/tags/"):
            if revision.startswith(prefix):
                return self.resolve(revision[len(prefix):])
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubState:
    """Users, tokens, repos, blobs; every method is called with ``lock`` held."""

    def __init__(self):
        self.lock = threading.RLock()
        self.users: Dict[str, Dict[str, str]] = {}  # user -> {org: roleInOrg}
        self.tokens: Dict[str, dict] = {}
        self.repos: Dict[Tuple[str, str], Repo] = {}
        self.blobs: Dict[str, bytes] = {}
        self.lfs: Dict[str, bytes] = {}
        self.faults: List[dict] = []
        self.requests: List[Tuple[str, str, int]] = []
        self._counter = 0

    def new_oid(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{_now()}".encode()).hexdigest()

    # --------------------------------------------------------------- auth
    def caller(self, headers) -> Optional[dict]:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        token = auth[len("Bearer "):].strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def can_read(self, caller: Optional[dict], repo: Repo) -> bool:
        if not repo.private:
            return True
        return caller is not None and (caller["user"] == repo.namespace or repo.namespace in self.users[caller["user"]])

    def write_denied(self, caller: Optional[dict], namespace: str, repo_id: Optional[str]) -> Optional[str]:
        if caller is None:
            return "You must be authenticated to do this"
        user = caller["user"]
        if namespace != user and self.users[user].get(namespace) not in ("write", "admin"):
            return f"You don't have the rights to write in {namespace}"
        if caller["role"] == "read":
            return "This token is read-only"
        if caller["role"] == "fineGrained":
            for entry in caller.get("scoped", []):
                entity = entry["entity"]
                covers = entity["name"] == namespace if entity["type"] in ("user", "org") else entity["name"] == repo_id
                if covers and "repo.write" in entry["permissions"]:
                    return None
            return "This fine-grained token has no repo.write permission here"
        return None

    def repo(self, kind: str, repo_id: str, caller, write: bool = False) -> Repo:
        repo = self.repos.get((kind, repo_id))
        if repo is None or not self.can_read(caller, repo):
            raise HubError(401 if caller is None else 404, "Repository not found", "RepoNotFound")
        if write:
            denied = self.write_denied(caller, repo.namespace, repo_id)
            if denied:
                raise HubError(403, denied)
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def content(self, entry: FileEntry) -> bytes:
        return self.lfs[entry.lfs_sha256] if entry.lfs_sha256 else self.blobs[entry.blob_oid]

    # -------------------------------------------------------------- repos
    def create_repo(self, kind: str, repo_id: str, private: bool, caller) -> Repo:
        repo = Repo(kind=kind, repo_id=repo_id, private=private, created=_now())
        attributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        self.blobs[git_blob_oid(attributes)] = attributes
        first = Commit(self.new_oid(repo_id), None, {".gitattributes": FileEntry(len(attributes), git_blob_oid(attributes))},
                       "initial commit", _now())
        repo.commits[first.oid] = first
        repo.branches["main"] = first.oid
        self.repos[(kind, repo_id)] = repo
        return repo


class HubServer:
    """The server; ``start()`` runs it on a free port of 127.0.0.1 in a daemon thread."""

    def __init__(self):
        self.state = HubState()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        state = self.state
        handler = type("BoundHandler", (_Handler,), {"state": state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    # ------------------------------------------------------ test helpers
    def add_user(self, name: str, token: Optional[str] = None, role: str = "write", orgs: Optional[Dict[str, str]] = None,
                 scoped: Optional[list] = None):
        with self.state.lock:
            self.state.users[name] = dict(orgs or {})
            if token:
                self.add_token(name, token, role, scoped)

    def add_token(self, user: str, token: str, role: str = "write", scoped: Optional[list] = None):
        with self.state.lock:
            self.state.tokens[token] = {"user": user, "role": role, "scoped": list(scoped or [])}

    def fail(self, method: str, path_pattern: str, status: int = 500, times: int = 1, skip: int = 0):
        """Let ``skip`` requests matching ``method`` and ``path_pattern`` (a regex) through, then answer ``times`` with ``status``."""
        with self.state.lock:
            self.state.faults.append({"method": method, "pattern": re.compile(path_pattern), "status": status,
                                      "left": times, "skip": skip})

    @property
    def requests(self) -> List[Tuple[str, str, int]]:
        with self.state.lock:
            return list(self.state.requests)

    def refs(self, repo_id: str, kind: str = "dataset") -> dict:
        with self.state.lock:
            repo = self.state.repos[(kind, repo_id)]
            return {"branches": dict(repo.branches), "tags": dict(repo.tags)}

    def files(self, repo_id: str, revision: str = "main", kind: str = "dataset") -> Dict[str, bytes]:
        with self.state.lock:
            repo = self.state.repos[(kind, repo_id)]
            commit = self.state.commit_of(repo, revision)
            return {path: self.state.content(entry) for path, entry in commit.files.items()}

    def commits(self, repo_id: str, kind: str = "dataset") -> List[Commit]:
        """Commits of ``main``, newest first."""
        with self.state.lock:
            repo = self.state.repos[(kind, repo_id)]
            out, oid = [], repo.branches["main"]
            while oid is not None:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_KIND = r"(?P<kind>models|datasets|spaces)"
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/{_KIND}/{_REPO}/revision/(?P<rev>[^/]+)", "repo_info"),
    ("GET", rf"/api/{_KIND}/{_REPO}/auth-check(?P<write>/write)?", "auth_check"),
    ("POST", rf"/api/{_KIND}/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{_KIND}/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("POST", rf"/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("GET", rf"/api/{_KIND}/{_REPO}/refs", "refs"),
    ("GET", rf"/api/{_KIND}/{_REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
    ("POST", rf"/api/{_KIND}/{_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
    ("DELETE", rf"/api/{_KIND}/{_REPO}/tag/(?P<tag>[^/]+)", "delete_tag"),
    ("GET", rf"/api/{_KIND}/{_REPO}", "repo_info"),
    ("POST", r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("POST", r"/_lfs/verify", "lfs_verify"),
    ("GET", r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
_COMPILED = [(method, re.compile(pattern + r"$"), name) for method, pattern, name in _ROUTES]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, *args):  # keep test output clean
        pass

    # ------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: Optional[dict] = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        with self.state.lock:
            self.state.requests.append((self.command, urlsplit(self.path).path, status))

    def _json(self, data, status: int = 200, headers: Optional[dict] = None):
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _dispatch(self):
        body = self._body()
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        try:
            with self.state.lock:
                for fault in self.state.faults:
                    if fault["left"] > 0 and fault["method"] == self.command and fault["pattern"].search(url.path):
                        if fault["skip"] > 0:
                            fault["skip"] -= 1
                            continue
                        fault["left"] -= 1
                        raise HubError(fault["status"], "injected failure")
            for method, pattern, name in _COMPILED:
                match = pattern.match(url.path)
                if match and method == self.command:
                    with self.state.lock:
                        caller = self.state.caller(self.headers)
                        return getattr(self, "do_" + name)(caller, body, **match.groupdict())
            raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._json({"error": error.message}, error.status, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # ----------------------------------------------------------- endpoints
    def do_whoami(self, caller, body):
        if caller is None:
            raise HubError(401, "Unauthorized")
        user = caller["user"]
        token = {"displayName": "test", "role": caller["role"], "createdAt": _now()}
        if caller["role"] == "fineGrained":
            token["fineGrained"] = {"canReadGatedRepos": False, "global": [], "scoped": caller["scoped"]}
        orgs = [{"type": "org", "name": org, "roleInOrg": role} for org, role in self.state.users[user].items()]
        self._json({"type": "user", "id": user, "name": user, "fullname": user, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": token}})

    def do_create_repo(self, caller, body):
        payload = json.loads(body or b"{}")
        kind = payload.get("type") or "model"
        namespace = payload.get("organization") or (caller["user"] if caller else None)
        repo_id = f"{namespace}/{payload['name']}"
        denied = self.state.write_denied(caller, namespace, repo_id)
        if denied:
            raise HubError(401 if caller is None else 403, denied)
        if (kind, repo_id) in self.state.repos:
            raise HubError(409, "You already created this repo")
        private = payload.get("private", payload.get("visibility") == "private") or False
        self.state.create_repo(kind, repo_id, bool(private), caller)
        self._json({"url": f"http://{self.headers['Host']}/{PREFIX[kind]}{repo_id}", "name": repo_id, "id": repo_id})

    def do_validate_yaml(self, caller, body):
        content = json.loads(body).get("content", "")
        match = re.match(r"^---\r?\n(.*?)\r?\n---", content, re.DOTALL)
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return self._json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, 400)
        problems = []
        if not isinstance(data or {}, dict):
            problems.append("metadata must be a mapping")
        for config in (data or {}).get("configs") or []:
            if not isinstance(config, dict) or "config_name" not in config or "data_files" not in config:
                problems.append(f"invalid configs entry {config!r}")
        for key in ("license", "task_categories", "tags"):
            value = (data or {}).get(key)
            if value is not None and not isinstance(value, (str, list)):
                problems.append(f"{key} must be a string or a list")
        if problems:
            return self._json({"errors": [{"message": p} for p in problems], "warnings": []}, 400)
        self._json({"errors": [], "warnings": []})

    def _repo_json(self, repo: Repo, commit: Commit) -> dict:
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path, "size": entry.size, "blobId": entry.blob_oid}
            if entry.lfs_sha256:
                sibling["lfs"] = {"sha256": entry.lfs_sha256, "size": entry.size, "pointerSize": 134}
            siblings.append(sibling)
        card = None
        if "README.md" in commit.files:
            match = re.match(r"^---\r?\n(.*?)\r?\n---", self.state.content(commit.files["README.md"]).decode(), re.DOTALL)
            card = yaml.safe_load(match.group(1)) if match else None
        info = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "author": repo.namespace,
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created, "private": repo.private,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if card:
            info["cardData"] = card
        return info

    def do_repo_info(self, caller, body, kind, repo, rev="main"):
        record = self.state.repo(KINDS[kind], repo, caller)
        self._json(self._repo_json(record, self.state.commit_of(record, rev)))

    def do_auth_check(self, caller, body, kind, repo, write=None):
        record = self.state.repo(KINDS[kind], repo, caller, write=bool(write))
        self._json({"ok": True, "repo": record.repo_id})

    def do_preupload(self, caller, body, kind, repo, rev):
        record = self.state.repo(KINDS[kind], repo, caller, write=True)
        commit = self.state.commit_of(record, rev)
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if lfs else (existing.blob_oid if not existing.lfs_sha256 else None)
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": commit.oid})

    def do_lfs_batch(self, caller, body, repo, prefix=None):
        kind = {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")
        self.state.repo(kind, repo, caller, write=True)
        objects = []
        base = f"http://{self.headers['Host']}"
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{base}/_lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{base}/_lfs/verify", "header": {}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   "application/vnd.git-lfs+json")

    def do_lfs_put(self, caller, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "content does not match its sha256")
        self.state.lfs[oid] = body
        self._send(200, b"", "text/plain")

    def do_lfs_verify(self, caller, body):
        data = json.loads(body)
        if data["oid"] not in self.state.lfs or len(self.state.lfs[data["oid"]]) != data["size"]:
            raise HubError(404, "object not uploaded")
        self._json({"ok": True})

    def do_commit(self, caller, body, kind, repo, rev):
        record = self.state.repo(KINDS[kind], repo, caller, write=True)
        branch = unquote(rev)
        if branch not in record.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        head = record.branches[branch]
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(record.commits[head].files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                content = base64.b64decode(value["content"])
                self.state.blobs[git_blob_oid(content)] = content
                files[value["path"]] = FileEntry(len(content), git_blob_oid(content))
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                size = len(self.state.lfs[value["oid"]])
                files[value["path"]] = FileEntry(size, git_blob_oid(lfs_pointer(value["oid"], size)), value["oid"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(folder)]:
                    del files[path]
        commit = Commit(self.state.new_oid(repo), head, files, header.get("summary", ""), _now())
        record.commits[commit.oid] = commit
        record.branches[branch] = commit.oid
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": f"http://{self.headers['Host']}/{PREFIX[record.kind]}{repo}/commit/{commit.oid}",
                    "pullRequestUrl": None})

    def _entry_json(self, path: str, entry: FileEntry, commit: Commit, expand: bool) -> dict:
        item = {"type": "file", "oid": entry.blob_oid, "size": entry.size, "path": path}
        if entry.lfs_sha256:
            item["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": 134}
        if expand:
            item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return item

    def _folder_json(self, path: str, commit: Commit, expand: bool) -> dict:
        item = {"type": "directory", "oid": hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return item

    def do_tree(self, caller, body, kind, repo, rev, path=None):
        record = self.state.repo(KINDS[kind], repo, caller)
        commit = self.state.commit_of(record, rev)
        root = unquote(path or "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = root + "/" if root else ""
        if root and root in commit.files:
            raise HubError(404, f"{root} is a file, not a folder", "EntryNotFound")
        entries, folders = [], set()
        for file_path, entry in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._entry_json(file_path, entry, commit, expand))
        if root and not entries and not folders:
            raise HubError(404, f"{root} does not exist", "EntryNotFound")
        self._json([self._folder_json(f, commit, expand) for f in sorted(folders)] + entries)

    def do_paths_info(self, caller, body, kind, repo, rev):
        record = self.state.repo(KINDS[kind], repo, caller)
        commit = self.state.commit_of(record, rev)
        form = parse_qs(body.decode()) if body and not body.lstrip().startswith(b"{") else {}
        if not form and body:
            data = json.loads(body)
            form = {"paths": data.get("paths", []), "expand": [str(data.get("expand", False))]}
        expand = (form.get("expand") or ["False"])[0].lower() in ("1", "true")
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry_json(path, commit.files[path], commit, expand))
            elif any(p.startswith(path + "/") for p in commit.files) or path == "":
                out.append(self._folder_json(path, commit, expand))
        self._json(out)

    def do_refs(self, caller, body, kind, repo):
        record = self.state.repo(KINDS[kind], repo, caller)
        self._json({
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in sorted(record.branches.items())],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": oid} for n, oid in sorted(record.tags.items())],
            "converts": [],
            "pullRequests": [],
        })

    def do_list_commits(self, caller, body, kind, repo, rev):
        record = self.state.repo(KINDS[kind], repo, caller)
        commit, out = self.state.commit_of(record, rev), []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": "", "date": commit.date,
                        "authors": [{"user": record.namespace}]})
            commit = record.commits.get(commit.parent) if commit.parent else None
        self._json(out)

    def do_create_tag(self, caller, body, kind, repo, rev):
        record = self.state.repo(KINDS[kind], repo, caller, write=True)
        commit = self.state.commit_of(record, rev)
        tag = json.loads(body)["tag"]
        if tag in record.tags or tag in record.branches:
            raise HubError(409, f"Tag {tag} already exists")
        record.tags[tag] = commit.oid
        self._json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    def do_delete_tag(self, caller, body, kind, repo, tag):
        record = self.state.repo(KINDS[kind], repo, caller, write=True)
        if record.tags.pop(unquote(tag), None) is None:
            raise HubError(404, f"Tag {unquote(tag)} not found", "RevisionNotFound")
        self._json({})

    def do_resolve(self, caller, body, repo, rev, path, prefix=None):
        kind = {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")
        record = self.state.repo(kind, repo, caller)
        commit = self.state.commit_of(record, rev)
        path = unquote(path)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = self.state.content(entry)
        etag = entry.lfs_sha256 or entry.blob_oid
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs_sha256:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": str(entry.size)})
        byte_range = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        if byte_range and self.command == "GET":
            start_text, end_text = byte_range.groups()
            if start_text == "":
                start, end = max(0, len(content) - int(end_text)), len(content) - 1
            else:
                start, end = int(start_text), min(int(end_text) if end_text else len(content) - 1, len(content) - 1)
            if start >= len(content):
                return self._send(416, b"", "application/octet-stream", {"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return self._send(206, content[start:end + 1], "application/octet-stream", headers)
        self._send(200, content, "application/octet-stream", headers)
