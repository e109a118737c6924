"""Who may help whom (hub_services/admin/instructor_help.py) and what the attendee is shown
(gpuhub_spawner/hub/announce.py): the pure rules."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from gpuhub_spawner.hub.announce import shared_html
from hub_services.admin.instructor_help import HelpPolicy, server_url

POLICY = HelpPolicy("tas")


@pytest.mark.parametrize("model, helper, attendee", [
    ({"name": "a", "admin": True, "groups": []}, True, False),
    ({"name": "t", "admin": False, "groups": ["tas", "class"]}, True, False),
    ({"name": "s", "admin": False, "groups": ["class"]}, False, True),
    ({"name": "s", "groups": []}, False, True),  # no admin field: not an admin
    ({"name": "svc", "kind": "service", "admin": True}, False, False),  # a service never helps
    ({"name": "t", "admin": "true", "groups": ["class"]}, False, True),  # only a real true is admin
])
def test_helpers_are_admins_and_group_members_attendees_everyone_else(model, helper, attendee):
    assert POLICY.may_help(model) is helper
    if model.get("kind", "user") == "user":
        assert POLICY.is_attendee(model) is attendee


def test_help_off_lets_nobody_help_not_even_admins():
    assert not HelpPolicy("").may_help({"name": "a", "admin": True, "groups": []})


def test_a_share_holds_access_to_that_one_server_and_the_url_opens_it():
    assert POLICY.scopes("ann", "") == ["access:servers!server=ann/"]
    assert POLICY.scopes("ann", "gpu") == ["access:servers!server=ann/gpu"]
    assert server_url("/", "ann", "") == "/user/ann/"
    assert server_url("/base/", "a b", "x/y") == "/base/user/a%20b/x%2Fy/"


def _share(user, server, group=None):
    return SimpleNamespace(user=SimpleNamespace(name=user) if user else None,
                           group=SimpleNamespace(name=group) if group else None,
                           spawner=SimpleNamespace(name=server), created_at=datetime(2026, 11, 26, 9, 5))


def test_the_attendee_reads_who_can_open_which_server_escaped():
    owner = SimpleNamespace(name="ann", orm_user=SimpleNamespace(shares=[_share("t<b>", ""), _share(None, "gpu", "tas")]))
    text = shared_html(owner)
    assert "<b>t&lt;b&gt;</b> can open your server and work in it as you can (since 09:05 UTC on 26 Nov)" in text
    assert "<b>members of tas</b> can open your server <b>gpu</b>" in text
    assert shared_html(SimpleNamespace(name="bob", orm_user=SimpleNamespace(shares=[]))) == ""


def test_an_unreadable_share_list_leaves_the_page_as_it_was():
    class Broken:
        @property
        def shares(self):
            raise RuntimeError("database gone")

    assert shared_html(SimpleNamespace(name="ann", orm_user=Broken())) == ""
