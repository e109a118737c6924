"""Sign in with GitHub: org/team allowlists, GitHub teams as JupyterHub groups, and a roster.

:class:`GPUHubGitHubAuthenticator` is oauthenticator's ``GitHubOAuthenticator`` plus:

- a **roster**: GitHub usernames that an admin imported into a JupyterHub roster group get in
  without any GitHub organization;
- **teams as groups**: each GitHub team ``<org>:<team>`` of the user becomes a JupyterHub group
  of that name, so group properties (quotas) can follow GitHub teams;
- **admin_teams**: members of these teams are JupyterHub admins;
- **re-checked access**: at every refresh (``auth_refresh_age``, before a spawn) the user must
  still be allowed, else the hub asks for a new login, which then fails with 403.

Everything oauthenticator already does (``allowed_users``, ``allowed_organizations`` with
``org:team``, ``blocked_users``, ``admin_users``, deny by default) is unchanged.
"""

from __future__ import annotations

from typing import Any

from jupyterhub import orm
from jupyterhub.utils import maybe_future
from oauthenticator.github import GitHubOAuthenticator
from traitlets import Bool, Set, TraitError, Unicode, default, validate


def team_names(auth_state: dict[str, Any] | None) -> set[str]:
    """``<org>:<team>`` (team slug, as in the team's URL) for each team in ``auth_state["teams"]``."""
    teams = (auth_state or {}).get("teams") or ()
    return {f"{t['organization']['login']}:{t['slug']}" for t in teams}


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
        help="""GitHub teams, as `<org>:<team-slug>`, whose members are JupyterHub admins.

        Members are let in and made admins at each sign-in and refresh. Like oauthenticator's
        `admin_groups`: when this is set, anyone neither in `admin_users` nor in one of these
        teams has admin rights taken away at their next sign-in or refresh, including rights
        granted in the admin panel. Needs the `read:org` scope (the default `scope`).

            c.GPUHubGitHubAuthenticator.admin_teams = {"my-org:hub-admins"}
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
        bad = sorted(t for t in proposal.value if t.count(":") != 1 or "" in t.split(":"))
        if bad:
            raise TraitError(
                f"GPUHubGitHubAuthenticator.admin_teams: {bad} are not teams. Write each as "
                "'<org>:<team-slug>', e.g. 'my-org:hub-admins' for github.com/orgs/my-org/teams/hub-admins."
            )
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

    # ---- hooks ---------------------------------------------------------------------------

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
        """Fetch teams (parent), then grant or revoke admin from ``admin_teams``."""
        auth_model = await super().update_auth_model(auth_model)
        if self.admin_teams:
            teams = {t.lower() for t in team_names(auth_model["auth_state"])}
            if teams & {t.lower() for t in self.admin_teams}:
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
