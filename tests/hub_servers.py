"""Loopback HTTP servers for tests that must never reach the network (helpers only, no tests here).

``LoopbackFileServer`` serves a dict ``{url path: bytes}`` on ``http://127.0.0.1:<free port>`` (GET and HEAD,
404 for anything else) and records each request as ``(method, path)``. ``FakeHFEndpoint`` adds the routes
``huggingface_hub.hf_hub_download`` (2.4.0) uses, so that files put there with ``add_file`` download through
the real client. The server classes use the standard library only.

What ``hf_hub_download(repo_id, filename, revision=REV)`` asks of the endpoint (huggingface_hub 2.4.0):

- ``HEAD /{repo_id}/resolve/{REV}/{filename}`` (REV quoted with no safe characters: ``refs/pr/1`` is sent as
  ``refs%2Fpr%2F1``; dataset / space repos are prefixed ``datasets/`` / ``spaces/``). The answer must carry
  ``X-Repo-Commit`` (the 40-hex commit; without it the client gives up with ``FileMetadataError``) and an
  ``ETag`` (or ``X-Linked-Etag``, preferred when both are present) naming the blob in the cache; the size comes
  from ``X-Linked-Size`` or ``Content-Length``. Without ``X-Xet-Hash`` (+ a refresh route) the file is fetched
  over plain HTTP, never from Xet storage. Redirects are not needed: a 200 answer is used as it is. Errors are
  told apart by ``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound`` (the last with
  ``X-Repo-Commit``, so that the client caches the file's absence).
- ``GET`` of the same URL for the bytes, unless the blob (or, for a commit-hash REV, the snapshot file) is cached.
- Once per process, unless offline, telemetry is off (``HF_HUB_DISABLE_TELEMETRY=1``) or
  ``$HF_HOME/.agent_harnesses.json`` is less than a day old: ``GET /api/agent-harnesses`` (agent detection for
  the User-Agent; any failure is ignored). ``FakeHFEndpoint`` answers it with an empty registry, which the
  client then writes to ``huggingface_hub.constants.AGENT_HARNESSES_PATH``.

A second download of a cached file by branch or tag still sends the HEAD (to learn the branch's commit); only a
download by commit hash, or one made offline, sends nothing.

Pointing huggingface_hub at the endpoint. It reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``, ... once,
when ``huggingface_hub.constants`` is imported, so setting the environment inside a pytest process that has
already imported it changes nothing (the environment still serves subprocesses and code that reads it, e.g.
mmkat.hub's messages). In-process, patch the constants; ``FakeHFEndpoint.hub_constants(hf_home)`` lists those to
patch::

    import huggingface_hub.constants
    with FakeHFEndpoint() as hub:
        for name, value in hub.hub_constants(tmp_path / 'hf').items():
            monkeypatch.setattr(huggingface_hub.constants, name, value)
        monkeypatch.setenv('HF_ENDPOINT', hub.url)
        hub.add_file('acme/tiny', 'model.safetensors', data)
        ...  # hf_hub_download('acme/tiny', 'model.safetensors') now reads from hub

Patching ``ENDPOINT`` alone is not enough: download URLs are built from ``HUGGINGFACE_CO_URL_TEMPLATE``, which
is computed from the endpoint at import time. Offline mode is ``constants.HF_HUB_OFFLINE`` (read on each request).

Errors, with ``from huggingface_hub.errors import ...``: the endpoint down (connection refused) and the file not
cached, or offline (``HF_HUB_OFFLINE``) and the file not cached, both raise ``LocalEntryNotFoundError`` (a
``FileNotFoundError`` and ``EntryNotFoundError``); its ``__cause__`` is ``httpx2.ConnectError`` or
``OfflineModeIsEnabled``. A refused connection is retried 5 times with backoff first (about 23 s of sleeping,
with a warning logged for each try); offline fails at once. To fail at once on a refused connection too, patch
``huggingface_hub.file_download._DEFAULT_RETRY_ON_EXCEPTIONS`` to ``()`` (a private name of 2.4.0, checked by the
self-check). A file the repo lacks raises ``RemoteEntryNotFoundError`` (an ``EntryNotFoundError`` too); a revision
it lacks ``RevisionNotFoundError``.

Self-check (needs huggingface_hub): ``python tests/hub_servers.py``.
"""
import hashlib
import http.server
import json
import re
import threading
import urllib.parse

__all__ = ['LoopbackFileServer', 'FakeHFEndpoint']

_COMMIT = re.compile(r'[0-9a-f]{40}')


class _Handler(http.server.BaseHTTPRequestHandler):
    """Hands every GET / HEAD to the owning server object's ``_answer``."""

    protocol_version = 'HTTP/1.0'  # one request per connection: nothing stays open once the server stops

    def do_GET(self):
        self._reply('GET')

    def do_HEAD(self):
        self._reply('HEAD')

    def _reply(self, method):
        owner = self.server.owner
        try:
            status, headers, body = owner._answer(method, self.path)
        except Exception as err:  # a bug in a route: answer 500 rather than hang the client
            status, headers, body = 500, {'Content-Type': 'text/plain'}, f'{type(err).__name__}: {err}'.encode()
        self.send_response(status)
        headers = dict(headers)
        headers.setdefault('Content-Length', str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != 'HEAD':
            self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Stay quiet when a client goes away mid-answer; report anything else."""
        import sys
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackFileServer:
    """Serves ``files`` (``{url path: bytes}``, changeable at any time) on 127.0.0.1 with GET and HEAD.

    Unknown paths get 404. ``requests`` lists every request as ``(method, path)``, the path percent-decoded and
    without its query. The server runs from construction until ``stop()`` (or the end of a ``with`` block).
    """

    def __init__(self, files=None):
        self.files = dict(files or {})
        self.requests = []
        self._requests_lock = threading.Lock()
        self._server = _Server(('127.0.0.1', 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05),
                                        name=f'{type(self).__name__}:{self.port}', daemon=True)
        self._stopped = False
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f'http://127.0.0.1:{self.port}'

    def clear_requests(self):
        """Forget the requests recorded so far."""
        with self._requests_lock:
            self.requests.clear()

    def stop(self):
        """Stop serving and close the listening socket (later connections are refused). Idempotent."""
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------------------------------ answering
    def _answer(self, method, raw_path):
        """Record the request and return (status, headers, body)."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path)
        with self._requests_lock:
            self.requests.append((method, path))
        return self._route(method, raw_path, path)

    def _route(self, method, raw_path, path):
        """(status, headers, body) for a request; ``raw_path`` is the request target as sent."""
        data = self.files.get(path)
        if data is None:
            return 404, {'Content-Type': 'text/plain'}, b'not found\n'
        return 200, {'Content-Type': 'application/octet-stream'}, bytes(data)


class FakeHFEndpoint(LoopbackFileServer):
    """A Hugging Face Hub endpoint serving the repos' files that ``add_file`` puts there.

    Answers ``HEAD`` / ``GET /[datasets/|spaces/]{repo_id}/resolve/{revision}/{filename}`` (revision a branch,
    tag or 40-hex commit) with ``X-Repo-Commit``, ``ETag: "<sha256 of the file>"`` (as the Hub does for LFS
    files) and ``Content-Length``, and ``GET /api/agent-harnesses`` with an empty registry. Other paths are
    looked up in ``files`` as in ``LoopbackFileServer``.
    """

    _URL_PREFIXES = {'model': '', 'dataset': 'datasets/', 'space': 'spaces/'}

    def __init__(self, files=None):
        self._repos = {}  # '[datasets/]repo_id' -> {'refs': {ref: commit}, 'commits': {commit: {filename: bytes}}}
        self._repos_lock = threading.Lock()
        super().__init__(files)

    def add_file(self, repo_id, filename, data, revision='main', commit=None, repo_type='model') -> str:
        """Put ``data`` at ``filename`` of ``repo_id`` at ``revision``; returns the commit hash.

        ``revision`` is a branch / tag (then moved to ``commit``) or a 40-hex commit. Without ``commit``, a
        branch's current commit is kept, or one derived from the repo and revision is made. A new commit starts
        with the files of the one the branch pointed at, as a push would; to make a changed file visible to a
        client that cached the old one, give a new ``commit`` (the client caches files by commit).
        """
        if repo_type not in self._URL_PREFIXES:
            raise ValueError(f'repo_type must be one of {sorted(self._URL_PREFIXES)}, got {repo_type!r}')
        key = self._URL_PREFIXES[repo_type] + repo_id
        with self._repos_lock:
            repo = self._repos.setdefault(key, {'refs': {}, 'commits': {}})
            ref = None if _COMMIT.fullmatch(revision) else revision
            if ref is None:
                if commit is not None and commit != revision:
                    raise ValueError(f'revision {revision!r} is a commit hash; commit={commit!r} contradicts it')
                commit = revision
            elif commit is None:
                commit = repo['refs'].get(ref) or hashlib.sha1(f'{repo_type}:{repo_id}@{ref}'.encode()).hexdigest()
            if not _COMMIT.fullmatch(commit):
                raise ValueError(f'commit must be 40 lowercase hex digits, got {commit!r}')
            if commit not in repo['commits']:
                parent = repo['commits'].get(repo['refs'].get(ref)) if ref is not None else None
                repo['commits'][commit] = dict(parent or {})
            repo['commits'][commit][filename] = bytes(data)
            if ref is not None:
                repo['refs'][ref] = commit
        return commit

    def commit_of(self, repo_id, revision='main', repo_type='model'):
        """The commit ``revision`` of the repo points at (None if unknown)."""
        with self._repos_lock:
            repo = self._repos.get(self._URL_PREFIXES[repo_type] + repo_id)
            if repo is None:
                return None
            return revision if revision in repo['commits'] else repo['refs'].get(revision)

    def hub_constants(self, hf_home) -> dict:
        """``huggingface_hub.constants`` values that point an already imported huggingface_hub at this endpoint.

        Patch each (``monkeypatch.setattr(huggingface_hub.constants, name, value)``): the endpoint and the URL
        template built from it, the caches and the token file under ``hf_home``, online, and telemetry off (so
        that no ``/api/agent-harnesses`` request is made and nothing is read from the real ``HF_HOME``).
        """
        import os
        home = os.fspath(hf_home)
        return {
            'ENDPOINT': self.url,
            'HUGGINGFACE_CO_URL_TEMPLATE': self.url + '/{repo_id}/resolve/{revision}/{filename}',
            'HF_HOME': home,
            'HF_HUB_CACHE': os.path.join(home, 'hub'),
            'HF_ASSETS_CACHE': os.path.join(home, 'assets'),
            'HF_XET_CACHE': os.path.join(home, 'xet'),
            'HF_TOKEN_PATH': os.path.join(home, 'token'),
            'HF_STORED_TOKENS_PATH': os.path.join(home, 'stored_tokens'),
            'AGENT_HARNESSES_PATH': os.path.join(home, '.agent_harnesses.json'),
            'HF_HUB_OFFLINE': False,
            'HF_HUB_DISABLE_TELEMETRY': True,
            'HF_HUB_DISABLE_IMPLICIT_TOKEN': True,
        }

    def _route(self, method, raw_path, path):
        if path == '/api/agent-harnesses':
            body = json.dumps({'standardEnvVars': [], 'harnesses': {}}).encode()
            return 200, {'Content-Type': 'application/json'}, body
        target = urllib.parse.urlsplit(raw_path).path
        with self._repos_lock:
            for key, repo in self._repos.items():
                prefix = '/' + urllib.parse.quote(key) + '/resolve/'
                if target.startswith(prefix):
                    return self._resolve(repo, target[len(prefix):])
        if '/resolve/' in target and path not in self.files:
            return self._error(404, 'RepoNotFound', 'Repository not found')
        return super()._route(method, raw_path, path)

    def _resolve(self, repo, rest):
        """Answer ``.../resolve/{quoted revision}/{quoted filename}`` of a known repo (lock held)."""
        quoted_revision, _, quoted_filename = rest.partition('/')
        revision = urllib.parse.unquote(quoted_revision)
        commit = revision if revision in repo['commits'] else repo['refs'].get(revision)
        if commit is None:
            return self._error(404, 'RevisionNotFound', 'Invalid rev id: ' + revision)
        data = repo['commits'][commit].get(urllib.parse.unquote(quoted_filename))
        if data is None:
            return self._error(404, 'EntryNotFound', 'Entry not found', {'X-Repo-Commit': commit})
        headers = {
            'Content-Type': 'application/octet-stream',
            'ETag': '"' + hashlib.sha256(data).hexdigest() + '"',
            'X-Repo-Commit': commit,
        }
        return 200, headers, data

    @staticmethod
    def _error(status, code, message, extra=None):
        headers = {'Content-Type': 'application/json', 'X-Error-Code': code, 'X-Error-Message': message}
        headers.update(extra or {})
        return status, headers, json.dumps({'error': message}).encode()


# ---------------------------------------------------------------------------------------------- self-check
