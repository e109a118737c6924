"""A FAKE GitHub, for tests only: the OAuth web flow and the few REST calls oauthenticator makes.

GitHub cannot be reached from the test machines, so :class:`FakeGitHub` serves, on 127.0.0.1
in a thread, exactly what oauthenticator 17.4's ``GitHubOAuthenticator`` calls when
``github_url`` points at it (the API then lives under ``/api/v3``, as on GitHub Enterprise):

- ``GET  /login/oauth/authorize``: no sign-in page; redirects at once to ``redirect_uri`` with a
  code for whoever the browser's session cookie (:meth:`FakeGitHub.session_cookie`) or else
  :attr:`FakeGitHub.signed_in` names, and the ``state``;
- ``POST /login/oauth/access_token``: the code (and PKCE verifier) for a token, errors the way
  GitHub reports them (HTTP 200 with ``error``/``error_description``);
- ``GET /user``, ``/user/orgs``, ``/user/teams`` (one page, no ``Link`` header);
- ``GET /orgs/{org}/members/{user}`` and ``/orgs/{org}/teams/{team}/members/{user}``
  (the legacy team-member call oauthenticator uses for ``org:team``): 204 or 404.

Users, orgs and teams live in :attr:`FakeGitHub.users` and may be changed while a hub uses the
fake (``github.users["ann"].teams.discard("acme:gpu")``). Teams and orgs have numeric ids, as on
GitHub, that stay with a team when it is renamed (:meth:`FakeGitHub.rename_team`) and change
when a team of the same name is made anew (:meth:`FakeGitHub.recreate_team`). Production code
never imports this.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

API = "/api/v3"
SESSION_COOKIE = "user_session"  # github.com's session cookie
NOT_FOUND = (404, {}, {"message": "Not Found"})


@dataclass
class FakeUser:
    login: str
    id: int
    orgs: set[str] = field(default_factory=set)
    teams: set[str] = field(default_factory=set)  # "<org>:<team-slug>"

    def in_org(self, org: str) -> bool:
        """A team member is an org member, as on GitHub."""
        return org.lower() in {o.lower() for o in self.orgs} | {t.split(":")[0].lower() for t in self.teams}

    def in_team(self, org: str, team: str) -> bool:
        return f"{org}:{team}".lower() in {t.lower() for t in self.teams}


class FakeGitHub:
    """A fake github.com on a free local port; use as a context manager."""

    def __init__(self, client_id: str = "fake-client-id", client_secret: str = "fake-client-secret"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.users: dict[str, FakeUser] = {}
        self.ids: dict[str, int] = {}  # "<org>" or "<org>:<team-slug>" (lower case) -> GitHub id
        self._new_ids = itertools.count(5000)
        self.signed_in: str | None = None  # the browser's GitHub session, for /login/oauth/authorize
        self._sessions: dict[str, str] = {}  # GitHub session cookie -> login (many browsers at once)
        self.calls: list[str] = []  # "GET /path" of every request served
        self._codes: dict[str, tuple[str, str, str | None]] = {}  # code -> (login, scope, PKCE challenge)
        self._tokens: dict[str, str] = {}  # access token -> login
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._tls: tuple[str, str] | None = None  # (certificate chain, key) files: serve HTTPS
        self.refused: list[str] = []  # TLS handshakes a client broke off (it did not trust us)

    @property
    def url(self) -> str:
        assert self._server, "FakeGitHub is not started"
        host, port = self._server.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    def hub_config(self, organizations: set[str], admin_teams: set[str] = frozenset()) -> str:
        """Extra hub config (Python): gpuhub's GitHub sign-in against this fake, letting in members
        of ``organizations`` (``org`` or ``org:team``); ``admin_teams`` as gpuhub.yaml gives them."""
        return "\n".join([
            "import os",
            'c.JupyterHub.authenticator_class = "gpuhub-github"',
            "c.Authenticator.allow_all = False",
            f"c.GPUHubGitHubAuthenticator.github_url = {self.url!r}",
            f"c.GPUHubGitHubAuthenticator.client_id = {self.client_id!r}",
            f"c.GPUHubGitHubAuthenticator.client_secret = {self.client_secret!r}",
            'c.GPUHubGitHubAuthenticator.oauth_callback_url = os.environ["GPUHUB_BIND_URL"] + "/hub/oauth_callback"',
            f"c.GPUHubGitHubAuthenticator.allowed_organizations = {set(organizations)!r}",
            f"c.GPUHubGitHubAuthenticator.admin_teams = {set(admin_teams)!r}",
            "",
        ])

    def add_user(self, login: str, orgs: set[str] = frozenset(), teams: set[str] = frozenset()) -> FakeUser:
        user = FakeUser(login, 1000 + len(self.users), set(orgs), set(teams))
        self.users[login.lower()] = user
        for name in {*orgs, *teams, *(t.split(":")[0] for t in teams)}:
            self.id_of(name)
        return user

    def id_of(self, name: str) -> int:
        """The GitHub id of org ``<org>`` or team ``<org>:<team-slug>`` (made on first use)."""
        if name.lower() not in self.ids:
            self.ids[name.lower()] = next(self._new_ids)
        return self.ids[name.lower()]

    def rename_team(self, old: str, new: str) -> None:
        """GitHub's team rename: the slug changes, the id stays, members stay."""
        self.ids[new.lower()] = self.ids.pop(old.lower())
        for user in self.users.values():
            if old.lower() in {t.lower() for t in user.teams}:
                user.teams = {t for t in user.teams if t.lower() != old.lower()} | {new}

    def recreate_team(self, name: str) -> int:
        """A team deleted and made again under the same name: a new id."""
        self.ids[name.lower()] = next(self._new_ids)
        return self.ids[name.lower()]

    def session_cookie(self, login: str) -> dict[str, str]:
        """A GitHub sign-in of ``login`` in one browser: the cookie that browser then sends to
        /login/oauth/authorize (so many people can sign in at once, each in their own session)."""
        value = secrets.token_hex(16)
        with self._lock:
            self._sessions[value] = login
        return {SESSION_COOKIE: value}

    def issue_code(self, login: str, scope: str = "read:org", challenge: str | None = None) -> str:
        """What the authorize page does once ``login`` clicks "Authorize"."""
        code = secrets.token_hex(10)
        with self._lock:
            self._codes[code] = (login, scope, challenge)
        return code

    # ---- server -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> FakeGitHub:
        """Serve on ``host`` (a free port); with ``tls`` = (certificate chain, key) files, over
        HTTPS only, as github.com is: a client that does not trust the chain's CA fails there."""
        handler = type("Handler", (_Handler,), {"github": self})
        self._server = ThreadingHTTPServer((host, 0), handler)
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            # the handshake happens in the request's thread, so a client that stalls blocks no one
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
            self._tls = tls
            # a client that refuses the certificate is recorded, not printed
            self._server.handle_error = lambda _request, _address: self.refused.append(str(sys.exc_info()[1]))
        threading.Thread(target=self._server.serve_forever, name="fake-github", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- endpoints: each returns (status, headers, body) -----------------------------------

    def authorize(self, q: dict[str, str], headers: Any) -> tuple[int, dict, Any]:
        if q.get("client_id") != self.client_id:
            return NOT_FOUND
        login = self._sessions.get(_cookie(headers, SESSION_COOKIE)) or self.signed_in
        if not login:
            return 403, {}, {"message": "nobody is signed in to the fake GitHub (set FakeGitHub.signed_in)"}
        code = self.issue_code(login, q.get("scope", ""), q.get("code_challenge"))
        back = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        sep = "&" if "?" in q["redirect_uri"] else "?"
        return 302, {"Location": q["redirect_uri"] + sep + urlencode(back)}, None

    def access_token(self, form: dict[str, str], headers: Any) -> tuple[int, dict, Any]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if headers.get("Authorization", "").startswith("Basic "):
            client_id, _, secret = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
        if (client_id, secret) != (self.client_id, self.client_secret):
            return 200, {}, {"error": "incorrect_client_credentials", "error_description": "bad client"}
        with self._lock:
            login, scope, challenge = self._codes.pop(form.get("code", ""), (None, "", None))
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if login is None or (challenge and digest != challenge):
            error = "The code passed is incorrect or expired."
            return 200, {}, {"error": "bad_verification_code", "error_description": error}
        token = "gho_" + secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = login
        # GitHub lists granted scopes comma-separated
        return 200, {}, {"access_token": token, "token_type": "bearer", "scope": ",".join(scope.split())}

    def api(self, path: str, headers: Any) -> tuple[int, dict, Any]:
        kind, _, token = headers.get("Authorization", "").partition(" ")
        login = self._tokens.get(token) if kind.lower() in ("bearer", "token") else None
        me = self.users.get((login or "").lower())
        if me is None:
            return 401, {}, {"message": "Bad credentials"}
        if path == "/user":
            return 200, {}, {"login": me.login, "id": me.id, "name": me.login.title(), "email": None}
        if path == "/user/orgs":
            orgs = sorted({o for o in me.orgs} | {t.split(":")[0] for t in me.teams})
            return 200, {}, [{"login": o} for o in orgs]
        if path == "/user/teams":
            teams = [(t, *t.split(":")) for t in sorted(me.teams)]
            return 200, {}, [
                {"id": self.id_of(t), "slug": s, "name": s, "organization": {"login": o, "id": self.id_of(o)}}
                for t, o, s in teams
            ]
        if m := re.fullmatch(r"/orgs/([^/]+)/members/([^/]+)", path):
            user = self.users.get(m[2].lower())
            return (204, {}, None) if user and user.in_org(m[1]) else NOT_FOUND
        if m := re.fullmatch(r"/orgs/([^/]+)/teams/([^/]+)/members/([^/]+)", path):
            user = self.users.get(m[3].lower())
            return (204, {}, None) if user and user.in_team(m[1], m[2]) else NOT_FOUND
        return NOT_FOUND


def _cookie(headers: Any, name: str) -> str:
    for part in (headers.get("Cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/login/oauth/authorize":
            self._reply(*self.github.authorize(query, self.headers))
        elif url.path.startswith(API + "/"):
            self._reply(*self.github.api(url.path.removeprefix(API), self.headers))
        else:
            self._reply(*NOT_FOUND)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if urlsplit(self.path).path == "/login/oauth/access_token":
            form = {k: v[0] for k, v in parse_qs(body).items()}
            self._reply(*self.github.access_token(form, self.headers))
        else:
            self._reply(*NOT_FOUND)

    def _reply(self, status: int, headers: dict[str, str], body: Any) -> None:
        self.github.calls.append(f"{self.command} {urlsplit(self.path).path}")
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
