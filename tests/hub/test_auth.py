"""GPUHubGitHubAuthenticator against a fake GitHub: first alone, then inside a real JupyterHub."""

from __future__ import annotations

import logging
import secrets
import stat
import textwrap
import time

import pytest
import requests
from fakes.fake_github import FakeGitHub
from harness import HubProcess
from jupyterhub import orm
from jupyterhub.app import JupyterHub
from traitlets import TraitError

from gpuhub_spawner.core.labels import LABEL_USER
from gpuhub_spawner.hub.auth import GPUHubGitHubAuthenticator, GPUHubNativeAuthenticator, team_names


@pytest.fixture(scope="module")
def github():
    with FakeGitHub() as gh:
        gh.add_user("ann", teams={"acme:gpu"})
        gh.add_user("bob", orgs={"acme"}, teams={"acme:cooks"})
        gh.add_user("eve", teams={"acme:gpu"})
        gh.add_user("ada", teams={"acme:staff", "other:x"})
        gh.add_user("rory")
        gh.add_user("nora")
        gh.add_user("olga")
        yield gh


@pytest.fixture
def hub_app():
    """A JupyterHub application with its database, as the authenticator's parent (no server)."""
    app = JupyterHub(db_url="sqlite://")
    app.init_db()
    yield app
    app.db.close()


def make(github, parent=None, **config) -> GPUHubGitHubAuthenticator:
    return GPUHubGitHubAuthenticator(
        parent=parent,
        github_url=github.url,
        client_id=github.client_id,
        client_secret=github.client_secret,
        oauth_callback_url="http://127.0.0.1/hub/oauth_callback",
        enable_pkce=False,  # the real hub test below runs the PKCE flow
        **config,
    )


class CallbackHandler:
    """What oauthenticator reads from the /hub/oauth_callback request (PKCE off)."""

    def __init__(self, code: str):
        self.code = code

    def get_argument(self, name: str, default=None):
        return self.code if name == "code" else default


class HubUser:
    """What refresh_user reads from JupyterHub's User."""

    def __init__(self, name: str, auth_state: dict):
        self.name = name
        self.auth_state = auth_state

    async def get_auth_state(self):
        return self.auth_state


class HubUserOf:
    """JupyterHub's User wrapper, as the admin panel's and sign-in's add_user calls pass it."""

    def __init__(self, orm_user: orm.User):
        self.orm_user = orm_user
        self.name = orm_user.name


async def sign_in(auth: GPUHubGitHubAuthenticator, github: FakeGitHub, login: str):
    """JupyterHub's own entry point: authenticate, blocked_users, check_allowed. None = 403."""
    return await auth.get_authenticated_user(CallbackHandler(github.issue_code(login)), None)


def add_hub_user(app: JupyterHub, name: str, groups: set[str]) -> None:
    user = orm.User(name=name)
    app.db.add(user)
    for g in groups:
        group = orm.Group.find(app.db, g) or orm.Group(name=g)
        app.db.add(group)
        user.groups.append(group)
    app.db.commit()


# ---- alone: oauthenticator's rules, kept ----------------------------------------------------

ACCESS = [
    ("team-member", {"allowed_organizations": {"acme:gpu"}}, "ann", True),
    ("org-member-other-team", {"allowed_organizations": {"acme:gpu"}}, "bob", False),
    ("org-allowed", {"allowed_organizations": {"acme"}}, "bob", True),
    ("in-no-org", {"allowed_organizations": {"acme"}}, "rory", False),
    ("blocked-team-member", {"allowed_organizations": {"acme:gpu"}, "blocked_users": {"eve"}}, "eve", False),
    ("allowed-users", {"allowed_users": {"nora"}}, "nora", True),
    ("admin-team-member", {"admin_teams": {"acme:staff"}}, "ada", True),
    ("nothing-configured", {}, "ann", False),
]


def by_id(github: FakeGitHub, config: dict) -> dict:
    """``admin_teams`` written as the operator must: ``<org>:<team-slug>=<GitHub team id>``."""
    if "admin_teams" in config:
        config = {**config, "admin_teams": {f"{t}={github.id_of(t)}" for t in config["admin_teams"]}}
    return config


@pytest.mark.parametrize("config, login, allowed", [c[1:] for c in ACCESS], ids=[c[0] for c in ACCESS])
async def test_access(github, config, login, allowed):
    model = await sign_in(make(github, **by_id(github, config)), github, login)
    assert (model is not None) is allowed


async def test_team_check_uses_the_team_member_endpoint(github):
    github.calls.clear()
    assert await sign_in(make(github, allowed_organizations={"acme:gpu"}), github, "ann")
    assert "GET /api/v3/orgs/acme/teams/gpu/members/ann" in github.calls


ADMIN = [
    ("admin-team", {"admin_teams": {"acme:staff"}}, "ada", True),
    ("not-in-admin-team-revoked", {"admin_teams": {"acme:staff"}}, "ann", False),
    ("admin-users-kept", {"admin_teams": {"acme:staff"}, "admin_users": {"ann"}}, "ann", True),
    ("no-admin-teams-unchanged", {}, "ann", None),
]


@pytest.mark.parametrize("config, login, admin", [c[1:] for c in ADMIN], ids=[c[0] for c in ADMIN])
async def test_admin(github, config, login, admin):
    model = await sign_in(make(github, allowed_organizations={"acme"}, **by_id(github, config)), github, login)
    assert model["admin"] is admin


async def test_admin_team_is_its_id_not_its_name(github):
    github.add_user("abe", teams={"acme:hub-admins"})
    auth = make(github, allowed_organizations={"acme"}, admin_teams={f"{github.id_of('acme:hub-admins')}"})
    assert (await sign_in(auth, github, "abe"))["admin"] is True

    github.rename_team("acme:hub-admins", "acme:hub-staff")  # renamed on GitHub: still the admin team
    assert (await sign_in(auth, github, "abe"))["admin"] is True

    github.rename_team("acme:hub-staff", "acme:hub-admins")
    github.recreate_team("acme:hub-admins")  # deleted and made again by someone else: not it
    assert (await sign_in(auth, github, "abe"))["admin"] is False


async def test_teams_become_group_names(github):
    auth = make(github, allowed_organizations={"acme"})
    assert (auth.scope, auth.manage_groups, auth.populate_teams_in_auth_state) == (["read:org"], True, True)
    model = await sign_in(auth, github, "ada")
    assert model["groups"] == ["acme:staff", "other:x"]
    assert team_names(model["auth_state"]) == {"acme:staff", "other:x"}


async def test_team_groups_off(github):
    auth = make(github, allowed_organizations={"acme"}, team_groups=False)
    assert (auth.manage_groups, auth.populate_teams_in_auth_state) == (False, False)
    model = await sign_in(auth, github, "ada")
    assert "groups" not in model and "teams" not in model["auth_state"]


@pytest.mark.parametrize(
    "trait, value",
    [
        ("admin_teams", {"acme:staff"}),
        ("admin_teams", {"staff=12"}),
        ("admin_teams", {"acme:=12"}),
        ("admin_teams", {"acme:staff=twelve"}),
        ("roster_groups", {"acme:gpu"}),
    ],
    ids=["team-name-without-id", "team-without-org", "empty-team", "id-not-a-number", "roster-with-colon"],
)
def test_bad_config_is_refused_with_the_fix(github, trait, value):
    with pytest.raises(TraitError, match=f"GPUHubGitHubAuthenticator.{trait}: .*e.g."):
        make(github, **{trait: value})


@pytest.mark.parametrize(
    "config, warned",
    [
        ({}, True),
        ({"enable_auth_state": True}, False),
        ({"enable_auth_state": True, "auth_refresh_age": 0}, True),
    ],
    ids=["no-auth-state", "rechecked", "refresh-off"],
)
def test_start_up_warns_when_access_is_never_rechecked(github, caplog, config, warned):
    auth = make(github, allowed_organizations={"acme"}, log=logging.getLogger("test_auth"), **config)
    with caplog.at_level(logging.WARNING, logger="test_auth"):
        auth.check_allow_config()
    assert ("checked only at sign-in" in caplog.text) is warned


# ---- alone, with the hub's database: roster and kept groups ---------------------------------

ROSTER = [
    ("in-roster-group", {}, {"roster"}, True),
    ("in-other-group", {}, {"cpu-only"}, False),
    ("custom-roster-group", {"roster_groups": {"day1", "day2"}}, {"day2"}, True),
    ("roster-off", {"roster_groups": set()}, {"roster"}, False),
    ("not-a-hub-user", {}, None, False),
]


@pytest.mark.parametrize("config, groups, allowed", [c[1:] for c in ROSTER], ids=[c[0] for c in ROSTER])
async def test_roster(github, hub_app, config, groups, allowed):
    if groups is not None:
        add_hub_user(hub_app, "rory", groups)
    auth = make(github, hub_app, allowed_organizations={"acme"}, **config)
    assert ((await sign_in(auth, github, "rory")) is not None) is allowed


async def test_sign_in_keeps_admin_groups_and_replaces_team_groups(github, hub_app):
    add_hub_user(hub_app, "ann", {"roster", "cpu-only", "acme:old-team"})
    model = await sign_in(make(github, hub_app, allowed_organizations={"acme"}), github, "ann")
    assert model["groups"] == ["acme:gpu", "cpu-only", "roster"]


async def test_users_an_admin_adds_may_sign_in_until_removed(github, hub_app):
    auth = make(github, hub_app, allowed_organizations={"acme:gpu"})
    assert auth.allow_existing_users is True
    user = orm.User(name="olga")  # what the admin panel / REST API / roster import makes
    hub_app.db.add(user)
    hub_app.db.commit()
    auth.add_user(HubUserOf(user))
    assert auth.hub_groups("olga") == {"roster"}
    assert await sign_in(auth, github, "olga")  # in no org, but added by an admin

    user.groups.clear()  # taken off the roster (or deleted): no longer "existing"
    hub_app.db.commit()
    assert await sign_in(auth, github, "olga") is None


async def test_users_who_got_in_by_membership_are_not_existing_users(github, hub_app):
    auth = make(github, hub_app, allowed_organizations={"acme:gpu"})
    github.add_user("ivy", teams={"acme:gpu"})
    assert await sign_in(auth, github, "ivy")
    ivy = orm.User(name="ivy")  # what the hub does next for a new user: create, then add_user
    hub_app.db.add(ivy)
    hub_app.db.commit()
    auth.add_user(HubUserOf(ivy))
    assert auth.hub_groups("ivy") == set()

    auth.add_user(ivy)  # at the next start the hub calls add_user with every orm.User
    assert auth.hub_groups("ivy") == set()
    github.users["ivy"].teams.clear()  # so leaving the team still ends access
    assert await sign_in(auth, github, "ivy") is None


async def test_refresh_follows_teams_then_refuses(github, hub_app):
    github.add_user("tim", teams={"acme:gpu", "acme:cooks"})
    auth = make(github, hub_app, allowed_organizations={"acme:gpu"}, enable_auth_state=True)
    user = HubUser("tim", (await sign_in(auth, github, "tim"))["auth_state"])

    github.users["tim"].teams.discard("acme:cooks")
    assert (await auth.refresh_user(user))["groups"] == ["acme:gpu"]

    github.users["tim"].teams.clear()  # out of the allowed team: a new login is required
    assert await auth.refresh_user(user) is False

    add_hub_user(hub_app, "tim", {"roster"})  # ...unless on the roster
    assert (await auth.refresh_user(user))["groups"] == ["roster"]

    auth.blocked_users = {"tim"}
    assert await auth.refresh_user(user) is False


# ---- inside a real JupyterHub --------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(github, docker_client, tmp_path_factory, request):
    extra = textwrap.dedent(
        f"""
        import os
        c.JupyterHub.authenticator_class = "gpuhub_spawner.hub.auth.GPUHubGitHubAuthenticator"
        c.Authenticator.allow_all = False  # the embedded default allows all (shared password)
        c.GPUHubGitHubAuthenticator.github_url = {github.url!r}
        c.GPUHubGitHubAuthenticator.client_id = {github.client_id!r}
        c.GPUHubGitHubAuthenticator.client_secret = {github.client_secret!r}
        c.GPUHubGitHubAuthenticator.oauth_callback_url = os.environ["GPUHUB_BIND_URL"] + "/hub/oauth_callback"
        c.GPUHubGitHubAuthenticator.allowed_organizations = {{"acme:gpu"}}
        c.GPUHubGitHubAuthenticator.admin_teams = {{"acme:staff={github.id_of('acme:staff')}"}}
        c.GPUHubGitHubAuthenticator.enable_auth_state = True
        c.GPUHubGitHubAuthenticator.auth_refresh_age = 2
        """
    )
    hub = HubProcess(tmp_path_factory.mktemp("auth-hub"), extra=extra)
    failed_before = request.session.testsfailed
    hub.crypt_key = secrets.token_hex(32)
    hub.start(env={"JUPYTERHUB_CRYPT_KEY": hub.crypt_key})
    yield hub
    if request.session.testsfailed > failed_before:
        print(f"\n---- hub {hub.hub_id} log ----\n{hub.log_tail(120)}")
    hub.cleanup(docker_client)


def hub_login(hub: HubProcess, github: FakeGitHub, login: str) -> tuple[requests.Session, requests.Response]:
    """The browser's OAuth round trip, one redirect at a time (the last one would spawn)."""
    s = requests.Session()
    github.signed_in = login
    r = s.get(hub.url + "/hub/oauth_login", allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    assert r.headers["Location"].startswith(github.url + "/login/oauth/authorize")
    r = s.get(r.headers["Location"], allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/hub/oauth_callback?" in r.headers["Location"], r.text
    return s, s.get(r.headers["Location"], allow_redirects=False, timeout=30)


def home(hub: HubProcess, s: requests.Session) -> int:
    return s.get(hub.url + "/hub/home", allow_redirects=False, timeout=10).status_code


@pytest.mark.docker
@pytest.mark.hub
def test_hub_rostered_user_in_no_org_gets_in(hub, github):
    hub.create_users(["rory"])
    assert hub.api("POST", "/groups/roster").status_code in (201, 409)
    assert hub.api("POST", "/groups/roster/users", json={"users": ["rory"]}).ok

    s, r = hub_login(hub, github, "rory")
    assert r.status_code == 302, r.text
    assert home(hub, s) == 200
    assert hub.user("rory")["groups"] == ["roster"]  # sign-in kept the admin's group
    log = hub.log_path.read_text()
    assert "Allowing rory: on the roster" in log
    assert "Authenticator.db is deprecated" not in log  # the roster reads JupyterHub.db


@pytest.mark.docker
@pytest.mark.hub
def test_hub_user_in_no_org_and_not_rostered_is_refused(hub, github):
    s, r = hub_login(hub, github, "nora")
    assert r.status_code == 403
    assert home(hub, s) == 302
    assert hub.api("GET", "/users/nora").status_code == 404


@pytest.mark.docker
@pytest.mark.hub
def test_hub_team_member_lands_in_team_group_and_admin_team_is_admin(hub, github):
    s, r = hub_login(hub, github, "ann")
    assert r.status_code == 302, r.text
    assert home(hub, s) == 200
    assert (hub.user("ann")["groups"], hub.user("ann")["admin"]) == (["acme:gpu"], False)

    s, r = hub_login(hub, github, "ada")
    assert r.status_code == 302, r.text
    assert (sorted(hub.user("ada")["groups"]), hub.user("ada")["admin"]) == (["acme:staff", "other:x"], True)


@pytest.mark.docker
@pytest.mark.hub
def test_hub_refresh_follows_teams_and_ends_access(hub, github):
    github.add_user("remy", teams={"acme:gpu", "acme:cooks"})
    s, r = hub_login(hub, github, "remy")
    assert r.status_code == 302, r.text
    assert sorted(hub.user("remy")["groups"]) == ["acme:cooks", "acme:gpu"]

    github.users["remy"].teams.discard("acme:cooks")
    time.sleep(2.2)  # auth_refresh_age
    assert home(hub, s) == 200
    assert sorted(hub.user("remy")["groups"]) == ["acme:gpu"]

    github.users["remy"].teams.clear()
    time.sleep(2.2)
    assert home(hub, s) == 302  # refresh_user said False: sign in again...
    assert hub_login(hub, github, "remy")[1].status_code == 403  # ...which is refused


@pytest.mark.docker
@pytest.mark.hub
def test_hub_checks_github_inside_the_spawn_and_refuses_someone_no_longer_let_in(hub, github, docker_client):
    github.add_user("gwen", teams={"acme:gpu"})
    s, r = hub_login(hub, github, "gwen")
    assert r.status_code == 302, r.text
    github.users["gwen"].teams.clear()  # taken out of the team after signing in
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf") or ""
    r = s.post(hub.url + "/hub/api/users/gwen/server", headers={"X-XSRFToken": xsrf}, json={}, timeout=60)
    # the spawn ran JupyterHub's refresh (GitHub asked again) and failed before anything was made
    if r.status_code == 202:  # answered before the check ended: the progress stream tells
        events = s.get(hub.url + "/hub/api/users/gwen/server/progress", headers={"X-XSRFToken": xsrf},
                       timeout=60).text
        assert "GitHub no longer gives you access to this hub" in events, events[-2000:]
    else:
        assert r.status_code == 403 and "GitHub no longer gives you access" in r.json()["message"], r.text
    assert not hub.user("gwen")["servers"]
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_USER}=gwen"})
    assert "gwen may no longer use this hub: their spawn is refused" in hub.log_path.read_text()


@pytest.mark.docker
@pytest.mark.hub
def test_hub_user_added_by_an_admin_signs_in_and_deleting_them_ends_it(hub, github):
    hub.create_users(["olga"])  # as the admin panel does
    assert hub.user("olga")["groups"] == ["roster"]
    s, r = hub_login(hub, github, "olga")
    assert r.status_code == 302, r.text
    assert home(hub, s) == 200

    assert hub.api("DELETE", "/users/olga").status_code == 204
    assert hub_login(hub, github, "olga")[1].status_code == 403
    assert hub.api("GET", "/users/olga").status_code == 404


@pytest.mark.docker
@pytest.mark.hub
def test_hub_restart_does_not_make_org_members_existing_users(hub, github):
    github.add_user("kim", teams={"acme:gpu"})
    assert hub_login(hub, github, "kim")[1].status_code == 302
    hub.stop()
    hub.start(env={"JUPYTERHUB_CRYPT_KEY": hub.crypt_key})
    assert hub.user("kim")["groups"] == ["acme:gpu"]  # not put on the roster at start
    github.users["kim"].teams.clear()
    assert hub_login(hub, github, "kim")[1].status_code == 403


def test_embedded_config_refuses_admin_teams_without_ids(hub_factory):
    hub = hub_factory({}, start=False)
    env = {"GITHUB_CLIENT_ID": "client-id", "GITHUB_CLIENT_SECRET": "secret", "GPUHUB_GITHUB_ADMIN_TEAMS": "acme:staff"}
    with pytest.raises(RuntimeError, match="hub exited with 2"):
        hub.start(env=env)
    log = hub.log_path.read_text()
    assert "GPUHUB_GITHUB_ADMIN_TEAMS: ['acme:staff'] do not give the team's id" in log
    assert "gh api orgs/acme/teams/staff --jq .id" in log and "Traceback" not in log


def test_embedded_config_switches_to_github_sign_in(hub_factory):
    # jupyterhub_config.py picks the gpuhub GitHub authenticator when a client id is set
    hub = hub_factory({}, start=False)
    hub.start(
        env={
            "GITHUB_CLIENT_ID": "client-id",
            "GITHUB_CLIENT_SECRET": "client-secret",
            "GPUHUB_GITHUB_ORGS": "acme:gpu",
            "GPUHUB_GITHUB_ADMIN_TEAMS": "acme:staff=4242",
        }
    )
    log = hub.log_path.read_text()
    assert "Using Authenticator: gpuhub_spawner.hub.auth.GPUHubGitHubAuthenticator" in log
    assert "sign in with any username" not in log  # no shared password once GitHub is configured
    r = requests.get(hub.url + "/hub/login", timeout=10)
    assert r.ok and "Sign in with GitHub" in r.text


# ---- the embedded default: GPUHubNativeAuthenticator ----------------------------------------


def native(hub_app: JupyterHub, tmp_path, **config) -> GPUHubNativeAuthenticator:
    """The embedded default's authenticator on a hub database, as JupyterHub builds it."""
    return GPUHubNativeAuthenticator(
        parent=hub_app, _deprecated_db_session=hub_app.db, admin_credentials_dir=str(tmp_path / "creds"), **config
    )


class FormHandler:
    """What JupyterHub's login handler passes along: nothing the authenticator reads."""


async def password_sign_in(auth: GPUHubNativeAuthenticator, name: str, password: str):
    return await auth.get_authenticated_user(FormHandler(), {"username": name, "password": password})


async def test_native_admin_gets_a_generated_password_in_a_private_file(hub_app, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        auth = native(hub_app, tmp_path, admin_users={"prof"})
    path = tmp_path / "creds" / "prof"
    password = path.read_text().strip()
    assert len(password) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert str(path) in caplog.text and password not in caplog.text  # where, never the secret
    model = await password_sign_in(auth, "prof", password)
    assert model["name"] == "prof" and model["admin"] is True
    assert await password_sign_in(auth, "prof", "wrong-password") is None

    # a restart keeps the same password
    again = native(hub_app, tmp_path, admin_users={"prof"})
    assert path.read_text().strip() == password
    assert (await password_sign_in(again, "prof", password))["admin"] is True


SQUAT = [("same-name", "prof"), ("other-case", "PROF")]


@pytest.mark.parametrize("name", [s[1] for s in SQUAT], ids=[s[0] for s in SQUAT])
async def test_native_nobody_signs_up_as_an_admin(hub_app, tmp_path, name):
    auth = native(hub_app, tmp_path, admin_users={"prof"})
    assert auth.create_user(name, "a-long-attendee-password") is None
    assert await password_sign_in(auth, "prof", "a-long-attendee-password") is None


async def test_native_account_made_before_the_admin_is_taken_back(hub_app, tmp_path):
    # someone signed up as "prof" (and was even approved) before prof became an admin
    first = native(hub_app, tmp_path)
    squatter = first.create_user("prof", "squatter-password")
    squatter.is_authorized = True
    hub_app.db.commit()
    assert await password_sign_in(first, "prof", "squatter-password")

    auth = native(hub_app, tmp_path, admin_users={"prof"})
    assert await password_sign_in(auth, "prof", "squatter-password") is None
    password = (tmp_path / "creds" / "prof").read_text().strip()
    assert (await password_sign_in(auth, "prof", password))["admin"] is True


async def test_native_sign_up_grants_nothing_by_its_name(hub_app, tmp_path):
    # NativeAuthenticator approves sign-ups whose name is in allowed_users: not here
    auth = native(hub_app, tmp_path, admin_users={"prof"}, allowed_users={"mallory"})
    info = auth.create_user("mallory", "mallory-password", email="", has_2fa=False)
    assert info is not None and info.is_authorized is False
    assert await password_sign_in(auth, "mallory", "mallory-password") is None  # until approved
    info.is_authorized = True  # what the admin's "Authorize" button does
    hub_app.db.commit()
    model = await password_sign_in(auth, "mallory", "mallory-password")
    assert model["name"] == "mallory" and not model["admin"]


def test_native_admin_name_that_is_not_a_file_name_is_refused(hub_app, tmp_path):
    with pytest.raises(ValueError, match="GPUHUB_ADMIN_USERS: '../x' is not a username"):
        native(hub_app, tmp_path, admin_users={"../x"})
