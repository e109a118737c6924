"""Sign in with GitHub: org/team allowlists, GitHub teams as JupyterHub groups, and a roster.

:class:`GPUHubGitHubAuthenticator` is oauthenticator's ``GitHubOAuthenticator`` plus:

- a **roster**: GitHub usernames that an admin imported into a JupyterHub roster group get in
  without any GitHub organization;
- **teams as groups**: each GitHub team ``<org>:<team>`` of the user becomes a JupyterHub group
  of that name, so group properties (quotas) can follow GitHub teams;
- **admin_teams**: members of these teams, named by GitHub's team id (which a renamed or
  re-created team of the same name does not have), are JupyterHub admins;
- **users admins add may sign in** (``allow_existing_users``, on by default): a user added in
  the admin panel, the REST API or the roster import is put in the roster group, so it can sign
  in like any rostered user; delete it or take it off the roster to end its access. Users who
  got in through an org or team are not "existing users": they keep needing that membership;
- **re-checked access**: at every refresh (``auth_refresh_age``, and inside each spawn, before
  anything is created) the user must still be allowed, else the hub asks for a new login,
  which then fails with 403.

Everything oauthenticator already does (``allowed_users``, ``allowed_organizations`` with
``org:team``, ``blocked_users``, ``admin_users``, deny by default) is unchanged.

:class:`GPUHubNativeAuthenticator` is the embedded default when GitHub is not configured:
JupyterHub's NativeAuthenticator (each person signs up with their own password, stored as a
bcrypt hash in the hub database; an admin approves each sign-up) plus:

- **admins exist from the first start**: each name in ``admin_users`` gets a generated
  password, kept in a mode-0600 file under ``admin_credentials_dir``; only where it is goes
  to the log, never the password;
- **no name squatting**: nobody can sign up under an admin's name, and a sign-up is never
  approved by its name alone (only by an admin, or ``open_signup``);
- approving or discarding a sign-up works only from the admin's own "Authorize Users" page.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
from jupyterhub import orm
from jupyterhub.handlers.login import LoginHandler as HubLoginHandler
from jupyterhub.utils import maybe_future, url_path_join
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import DiscardHandler, LoginHandler, ToggleAuthorizationHandler
from nativeauthenticator.orm import UserInfo
from oauthenticator.github import GitHubOAuthenticator
from tornado import web
from traitlets import Bool, Set, TraitError, Unicode, default, validate

from gpuhub_spawner.core.hubconfig import ConfigError, admin_credential_path, secret_file


def team_names(auth_state: dict[str, Any] | None) -> set[str]:
    """``<org>:<team>`` (team slug, as in the team's URL) for each team in ``auth_state["teams"]``."""
    teams = (auth_state or {}).get("teams") or ()
    return {f"{t['organization']['login']}:{t['slug']}" for t in teams}


def team_ids(auth_state: dict[str, Any] | None) -> set[int]:
    """GitHub's numeric id of each team in ``auth_state["teams"]``: it stays through renames."""
    teams = (auth_state or {}).get("teams") or ()
    return {t["id"] for t in teams if isinstance(t.get("id"), int)}


def admin_team_id(entry: str) -> int | None:
    """The team id in an ``admin_teams`` entry, ``<org>:<team-slug>=<id>`` or ``<id>``; None if none."""
    name, sep, tail = entry.strip().rpartition("=")
    if not tail.isdigit() or (sep and (name.count(":") != 1 or "" in name.split(":"))):
        return None
    return int(tail)


def admin_teams_problem(entries: set[str]) -> str | None:
    """Why ``entries`` cannot be admin teams (a message with the fix), or None."""
    bad = sorted(e for e in entries if admin_team_id(e) is None)
    if not bad:
        return None
    org, _, slug = bad[0].split("=")[0].partition(":")
    return (
        f"{bad} do not give the team's id. A team name can be taken over (rename a team, or delete "
        "and re-create one, and the name points elsewhere), so admin teams are matched by GitHub's "
        "team id: write '<org>:<team-slug>=<id>', e.g. 'my-org:hub-admins=4242'; the id is what "
        f"`gh api orgs/{org or 'ORG'}/teams/{slug or 'TEAM'} --jq .id` prints."
    )


class GPUHubGitHubAuthenticator(GitHubOAuthenticator):
    """GitHub sign-in for gpuhub workshops (entry point ``gpuhub-github``)."""

    # ---- who gets in ------------------------------------------------------------------
    roster_groups = Set(
        Unicode(),
        default_value={"roster"},
        config=True,
        help="""JupyterHub groups whose members may sign in without any GitHub organization.

        A GitHub user is on the roster when a JupyterHub user of the same (normalized) name
        exists and is a member of at least one of these groups. Admins import a roster by
        creating the users and adding them to the group (admin panel, REST API or the
        "GPU Hub" admin page); removing a user from the group removes their access at the
        next refresh. The hub's own database is the store: nothing else to keep in sync.
        Group names may not contain ':' (those names belong to GitHub teams, see
        `team_groups`). An empty set turns the roster off.

            c.GPUHubGitHubAuthenticator.roster_groups = {"roster", "workshop-2025"}
        """,
    ).tag(allow_config=True)

    admin_teams = Set(
        Unicode(),
        config=True,
        help="""GitHub teams whose members are JupyterHub admins, by team id: `<org>:<team-slug>=<id>`.

        Matched by GitHub's numeric team id only (`gh api orgs/ORG/teams/SLUG --jq .id`); the
        name before `=` is for people reading the config. A renamed team stays an admin team;
        a new team given an old team's name (or an org re-registered under an old org's name)
        does not become one. A bare id (`4242`) works too; a name without an id is refused.
        Members are let in and made admins at each sign-in and refresh. Like oauthenticator's
        `admin_groups`: when this is set, anyone neither in `admin_users` nor in one of these
        teams has admin rights taken away at their next sign-in or refresh, including rights
        granted in the admin panel. Needs the `read:org` scope (the default `scope`).

            c.GPUHubGitHubAuthenticator.admin_teams = {"my-org:hub-admins=4242"}
        """,
    ).tag(allow_config=True)

    team_groups = Bool(
        True,
        config=True,
        help="""Make the user's GitHub teams their JupyterHub groups named `<org>:<team-slug>`.

        Turns on `manage_groups` and `populate_teams_in_auth_state` by default. At each
        sign-in and refresh, membership in groups whose name contains ':' is set to the
        user's current GitHub teams (groups are created as needed); other groups (the roster,
        groups holding quotas) are left as admins set them. Needs the `read:org` scope.
        Note: JupyterHub refuses `c.JupyterHub.load_groups` while `manage_groups` is on;
        create such groups through the REST API or admin panel instead.

            c.GPUHubGitHubAuthenticator.team_groups = False
        """,
    )

    # names of new users being signed in (not added by an admin), until add_user sees them
    _signing_in = Set(Unicode())

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self) -> bool:
        # oauthenticator turns it on with auth state: JupyterHub then asks GitHub (three or
        # more requests) before it answers a Start at all. The same check runs in
        # pre_spawn_start instead, inside the spawn, while the attendee sees its progress.
        return False

    async def pre_spawn_start(self, user, spawner) -> None:
        """Before a server is made, ask GitHub again whether ``user`` may still use the hub.

        JupyterHub's own ``refresh_pre_spawn`` does this before the Start request is answered,
        so a burst of Starts waits for GitHub in line (three requests or more each, on the
        hub's one event loop). Here it runs inside the spawn: the answer goes out at once and,
        with a gpuhub spawner, the check runs beside the admission (a quick refusal stays
        quick), which waits for it before anything is created. The refreshed teams and token
        are stored as JupyterHub stores them (admission, beside the check, reads the groups as
        they were: a team change GitHub reports now counts from the next spawn); someone GitHub
        no longer lets in gets a failed
        spawn that says to sign in again, whoever pressed Start (JupyterHub would let an
        admin's or a token's spawn go on).
        """
        await maybe_future(super().pre_spawn_start(user, spawner))
        if not (self.enable_auth_state and self.auth_refresh_age):
            return
        check = asyncio.ensure_future(self._still_allowed(user, getattr(spawner, "handler", None)))
        defer = getattr(spawner, "defer_access_check", None)
        if callable(defer):
            defer(check)
        else:
            await check

    async def _still_allowed(self, user, handler) -> None:
        refreshed = await self.refresh_user(user, handler)
        if not refreshed:
            self.log.warning("%s may no longer use this hub: their spawn is refused", user.name)
            raise web.HTTPError(
                403, "GitHub no longer gives you access to this hub (organization, team or roster). "
                "Sign in again; if that is refused too, ask the workshop's organizers."
            )
        if isinstance(refreshed, dict) and handler is not None and await self._changed(user, refreshed):
            refreshed["name"] = user.name
            refreshed.setdefault("auth_state", await user.get_auth_state())
            await handler.auth_to_user(refreshed, user)  # teams, admin flag and token, as a refresh does

    async def _changed(self, user, refreshed: dict[str, Any]) -> bool:
        """Whether GitHub's fresh answer differs from what the hub has (else nothing is written:
        a burst of Starts would rewrite every attendee's row to the same values)."""
        if "auth_state" in refreshed and refreshed["auth_state"] != await user.get_auth_state():
            return True
        if refreshed.get("admin") is not None and refreshed["admin"] != user.admin:
            return True
        if self.manage_groups and set(refreshed.get("groups") or ()) != {g.name for g in user.groups}:
            return True
        return bool(self.manage_roles and refreshed.get("roles") is not None)

    @default("allow_existing_users")
    def _default_allow_existing_users(self) -> bool:
        # admins expect a user they add in the admin panel to be able to sign in (see add_user)
        return True

    @default("scope")
    def _default_scope(self) -> list[str]:
        # private org and team membership is invisible without it
        return ["read:org"]

    @default("manage_groups")
    def _default_manage_groups(self) -> bool:
        return self.team_groups

    @default("populate_teams_in_auth_state")
    def _default_populate_teams(self) -> bool:
        return self.team_groups or bool(self.admin_teams)

    @validate("admin_teams")
    def _check_admin_teams(self, proposal):
        problem = admin_teams_problem(proposal.value)
        if problem:
            raise TraitError(f"GPUHubGitHubAuthenticator.admin_teams: {problem}")
        return proposal.value

    @validate("roster_groups")
    def _check_roster_groups(self, proposal):
        bad = sorted(g for g in proposal.value if ":" in g)
        if bad:
            raise TraitError(
                f"GPUHubGitHubAuthenticator.roster_groups: {bad} contain ':', which marks GitHub "
                "team groups that each sign-in rewrites. Use a name without ':', e.g. 'roster'."
            )
        return proposal.value

    # ---- the hub's database -----------------------------------------------------------

    def hub_groups(self, username: str) -> set[str]:
        """The JupyterHub groups of ``username``; empty when no such user (or outside a hub).

        Reads the hub's own session (``JupyterHub.db``, the parent application's), the one its
        request handlers write through, so changes made with the REST API count at once.
        """
        db = getattr(self.parent, "db", None)
        if db is None:
            return set()
        user = orm.User.find(db, name=username)
        return {g.name for g in user.groups} if user else set()

    def is_rostered(self, username: str) -> bool:
        """True when ``username`` is a hub user in one of ``roster_groups``."""
        return bool(self.roster_groups and self.hub_groups(username) & self.roster_groups)

    def put_on_roster(self, orm_user: orm.User) -> None:
        """Add ``orm_user`` to the first of ``roster_groups`` (made if missing)."""
        db = self.parent.db
        name = sorted(self.roster_groups)[0]
        group = orm.Group.find(db, name)
        if group is None:
            group = orm.Group(name=name)
            db.add(group)
        if group not in orm_user.groups:
            orm_user.groups.append(group)
            db.commit()
            self.log.info("%s was added by an admin: on the roster (group %s)", orm_user.name, name)

    # ---- hooks ---------------------------------------------------------------------------

    def add_user(self, user) -> None:
        """``allow_existing_users`` without "allowed forever": admin-added users go on the roster.

        JupyterHub calls this for a user an admin creates (admin panel, REST API, roster import:
        a ``User``), for a user made by their own first sign-in (also a ``User``), and at start
        for every user in the database and those named in config (an ``orm.User``).
        oauthenticator would put them all in ``allowed_users``, so anyone who once got in
        through an org or team would keep access after leaving it. Here only users an admin
        creates are put in the roster group: access lives in the hub's database, visible in the
        admin panel, and ends when they are deleted or taken off the roster.
        """
        if not self.validate_username(user.name):
            raise ValueError(f"Invalid username: {user.name}")
        if user.name in self._signing_in:
            self._signing_in.discard(user.name)  # made by their own sign-in: membership decides
            return
        if isinstance(user, orm.User):
            return  # start-up: users are already where admins and sign-ins put them
        if self.allow_existing_users and self.roster_groups:
            self.put_on_roster(user.orm_user)

    def check_allow_config(self) -> None:
        """JupyterHub's start-up check, plus: warn when access cannot be re-checked."""
        super().check_allow_config()
        if not self.enable_auth_state or not self.auth_refresh_age:
            self.log.warning(
                "GitHub membership and the roster are checked only at sign-in: to re-check them every "
                "auth_refresh_age seconds, set c.GPUHubGitHubAuthenticator.enable_auth_state = True "
                "(with JUPYTERHUB_CRYPT_KEY set) and a non-zero auth_refresh_age."
            )

    async def update_auth_model(self, auth_model: dict[str, Any]) -> dict[str, Any]:
        """Fetch teams (parent), then grant or revoke admin from ``admin_teams`` (by team id)."""
        auth_model = await super().update_auth_model(auth_model)
        if self.admin_teams:
            wanted = {admin_team_id(t) for t in self.admin_teams}
            if team_ids(auth_model["auth_state"]) & wanted:
                auth_model["admin"] = True
            elif not auth_model["admin"]:
                auth_model["admin"] = False
        return auth_model

    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        """Groups from ``auth_state_groups_key`` (if set), kept hub groups and GitHub teams."""
        groups = await super().get_user_groups(auth_state) if self.auth_state_groups_key else set()
        username = self.normalize_username(self.user_info_to_username(auth_state[self.user_auth_state_key]))
        current = self.hub_groups(username)
        if not self.team_groups:
            return groups | current
        if "teams" not in auth_state:
            self.log.error(
                "No GitHub teams for %s, so their team groups are left unchanged: set "
                "c.GPUHubGitHubAuthenticator.populate_teams_in_auth_state = True",
                username,
            )
            return groups | current
        return groups | {g for g in current if ":" not in g} | team_names(auth_state)

    async def check_allowed(self, username: str, auth_model: dict[str, Any] | None) -> bool:
        """oauthenticator's checks first, then the roster."""
        db = getattr(self.parent, "db", None)
        if db is not None and orm.User.find(db, name=username) is None:
            self._signing_in.add(username)  # new to the hub: add_user follows, see there
        if await super().check_allowed(username, auth_model):
            return True
        if self.is_rostered(username):
            self.log.info("Allowing %s: on the roster (in one of %s)", username, sorted(self.roster_groups))
            return True
        return False

    async def refresh_user(self, user, handler=None, **kwargs):
        """The parent's refresh (a fresh auth model from GitHub), then the same checks as sign-in.

        JupyterHub does not re-run ``check_allowed`` on refresh; returning False here makes
        it require a new login, which is then refused. Needs ``enable_auth_state`` (the
        GitHub token lives there): without it the parent returns True and nothing is checked.
        """
        refreshed = await super().refresh_user(user, handler, **kwargs)
        if not isinstance(refreshed, dict):
            return refreshed
        name = refreshed["name"]
        blocked_pass = await maybe_future(self.check_blocked_users(name, refreshed))
        if not (blocked_pass and await self.check_allowed(name, refreshed)):
            self.log.warning("%s is no longer allowed to use this hub: a new login is required", name)
            return False
        return refreshed


# ---- the embedded default: each person their own password ------------------------------------


class _FromAuthorizePage:
    """NativeAuthenticator approves and discards sign-ups on a plain GET: accept that GET only
    when it comes from a click on the hub's own "Authorize Users" page, so a link or image
    elsewhere on the hub's origin (a user's server, say) cannot make an admin's browser do it."""

    async def prepare(self):
        await super().prepare()
        referer = urlsplit(self.request.headers.get("Referer", ""))
        page = url_path_join(self.hub.base_url, "authorize")
        site = self.request.headers.get("Sec-Fetch-Site")  # set by the browser, not by pages
        same_origin = site == "same-origin" if site else referer.netloc == self.request.host
        if referer.path != page or not same_origin:
            raise web.HTTPError(403, "Approve or discard sign-ups with the buttons on the Authorize Users page.")


class _ToggleAuthorization(_FromAuthorizePage, ToggleAuthorizationHandler):
    pass


class _Discard(_FromAuthorizePage, DiscardHandler):
    pass


class _Login(LoginHandler):
    """NativeAuthenticator's sign-in page on JupyterHub 6's own login handler.

    NativeAuthenticator 1.3's ``post`` uses ``self.statsd`` (gone in JupyterHub 6: a 500 on every
    sign-in) and its ``_render`` refuses JupyterHub 6's error-page arguments. JupyterHub's own
    ``post`` and ``_render`` work; only the template is NativeAuthenticator's (with its sign-up link).
    """

    post = HubLoginHandler.post

    def _render(self, login_error=None, username=None, **kwargs):
        if login_error and self.request.method == "POST" and self._awaiting_approval():
            login_error = "Your sign-up has not been approved by an admin yet."
        return HubLoginHandler._render(self, login_error=login_error, username=username, **kwargs)

    def render_template(self, name, **ns):
        if name == "login.html":
            name = "native-login.html"
            ns.setdefault("enable_signup", self.authenticator.enable_signup)
            ns.setdefault("two_factor_auth", self.authenticator.allow_2fa)
        return super().render_template(name, **ns)

    def _awaiting_approval(self) -> bool:
        """The right password of an account that no admin approved yet (else say nothing more)."""
        info = self.authenticator.get_user(self.get_argument("username", "", strip=True))
        password = self.get_argument("password", "", strip=False)
        return bool(info and not info.is_authorized and password and info.is_valid_password(password))


class GPUHubNativeAuthenticator(NativeAuthenticator):
    """Each person their own password; admins get a generated one at first start."""

    admin_credentials_dir = Unicode(
        "admin-credentials",
        config=True,
        help="""Directory holding each admin's generated password, one file per admin.

        At start, every name in `admin_users` without a file here gets a generated password
        in `<dir>/<name>` (mode 0600, the directory 0700), and that name's account is set to
        it, replacing any account someone else made under that name before. The log says
        where the file is, never the password. An admin who changed their password at
        /hub/change-password no longer uses the file; delete the file and restart the hub to
        reset that admin's password. Relative paths are from the hub's working directory.

            c.GPUHubNativeAuthenticator.admin_credentials_dir = "/srv/gpuhub/admin-credentials"
        """,
    )

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # who may sign in is decided per account (approved by an admin), not by name lists
        return True

    @default("minimum_password_length")
    def _default_minimum_password_length(self) -> int:
        return 8

    @default("check_common_password")
    def _default_check_common_password(self) -> bool:
        return True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ensure_admin_accounts()

    def ensure_admin_accounts(self) -> None:
        """Give every admin an approved account with a generated password kept in a file."""
        directory = Path(self.admin_credentials_dir)
        for raw in sorted(self.admin_users):
            name = self.normalize_username(raw)
            try:
                path = admin_credential_path(directory, name)
            except ConfigError as e:
                raise ValueError(str(e)) from None
            password, new = secret_file(path)
            info = UserInfo.find(self.db, name)
            if info is None:
                self.db.add(UserInfo(username=name, password=_hash(password), is_authorized=True))
            elif new:
                # an account under this name that the admin never had: someone else made it
                info.password, info.is_authorized, info.has_2fa = _hash(password), True, False
                self.log.warning("Admin %s: the account made under that name before is replaced", name)
            self.db.commit()
            if new:
                self.log.info("Admin %s: generated password written to %s (mode 0600)", name, path)
            else:
                self.log.info("Admin %s: first password in %s (unless changed since)", name, path)

    def create_user(self, username: str, password: str, **kwargs: Any):
        """A sign-up: never under an admin's name, and never approved by its name alone."""
        name = self.normalize_username(username)
        if name in {self.normalize_username(a) for a in self.admin_users}:
            self.log.warning("Refused a sign-up as %s: that name belongs to a hub admin", name)
            return None
        info = super().create_user(username, password, **kwargs)
        if info is not None and info.is_authorized and not self.open_signup:
            info.is_authorized = False  # the parent pre-approves names in allowed_users
            self.db.commit()
        return info

    def get_handlers(self, app):
        replaced = {r"/login": _Login, r"/authorize/([^/]*)": _ToggleAuthorization, r"/discard/([^/]*)": _Discard}
        return [(route, replaced.get(route, handler)) for route, handler in super().get_handlers(app)]


def _hash(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt())
