"""One admission decision for a spawn: may this user start this server with this profile now?

The rules, in the order they are checked, each with one reason (:data:`errors.REASONS`) and one
wording wherever it is checked:

========================  ===================  =================================================
rule                      reason               message comes from
========================  ===================  =================================================
a profile that exists     bad-profile          :func:`forms.choose_profile` (what came back)
an allowed profile        forbidden-profile    :func:`forms.choose_profile` (the quota's list)
GPU units at once         quota-exceeded       :func:`units_message` (held, reserved, in line)
GPU-hour budget left      quota-exceeded       :func:`quotas.check_spawn` (the budget wording)
named servers at once     quota-exceeded       :func:`named_message`
========================  ===================  =================================================

:func:`decide` is pure: the hub gathers the facts (:class:`Facts`) and calls it from
``Spawner.apply_user_options``, which JupyterHub runs before ``pre_spawn_hook`` and ``start``,
so a refused REST request is answered 400/403 with the message and nothing is created.  The
units-at-once rule is checked again under the allocator's lock when the unit is reserved (two
requests at once cannot both pass); the allocator's :class:`~gpuhub_spawner.hub.fairline.OverLimit`
then becomes :func:`units_message` too.  What was admitted travels on as one :class:`Choice`:
the profile, the quota and the server's limits (:func:`server_limits`), resolved once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gpuhub_spawner.core import isolation
from gpuhub_spawner.core.inventory import Profile
from gpuhub_spawner.core.quotas import QuotaPolicy, check_spawn, parse_bytes
from gpuhub_spawner.hub import forms


class Refused(Exception):
    """The spawn may not go ahead: ``reason`` (from the fixed vocabulary) and the user's message."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Choice:
    """What a spawn was admitted with: resolved once, then read by allocation, limits and labels."""

    profile: Profile
    policy: QuotaPolicy
    #: memory, CPUs and PIDs of the server (:func:`server_limits`)
    limits: isolation.Limits | None = None

    @property
    def gpu(self) -> bool:
        return not self.profile.cpu_only

    @property
    def slug(self) -> str:
        return self.profile.slug


@dataclass(frozen=True)
class Facts:
    """What the hub knows about the user's other servers when it decides."""

    now: datetime
    #: this server's name ("" for the default server)
    server_name: str = ""
    #: the user's other named servers that are running or starting
    named_servers: int = 0
    #: GPU units the user's other servers hold or are being given
    units_held: int = 0
    #: the user's other servers waiting in line for a GPU unit
    units_waiting: int = 0
    #: GPU-seconds used in the current budget period
    gpu_seconds_used: float = 0.0


def choose(profiles: Sequence[Profile], user_options: Any, allowed: set[str] | None) -> Profile:
    """The profile ``user_options`` asks for, if it exists and is in ``allowed`` (None: all).

    ``user_options`` is whatever the client sent (a REST body may be anything).
    """
    if user_options is not None and not isinstance(user_options, Mapping):
        raise Refused("bad-profile", 'The server options must be an object such as {"profile": "cpu"}.')
    try:
        return forms.choose_profile(profiles, user_options or {}, allowed)
    except forms.ProfileChoiceError as e:
        raise Refused(e.reason, str(e)) from None


def server_limits(profile: Profile | None, policy: QuotaPolicy | None, defaults: isolation.Limits) -> isolation.Limits:
    """The server's limits: the stricter of the profile's and the quota's, else the defaults
    (never unlimited)."""
    return isolation.resolve_limits(
        parse_bytes(profile.mem_limit) if profile and profile.mem_limit else None,
        profile.cpu_limit if profile else None,
        policy.mem_limit if policy is not None else None,
        policy.cpu_limit if policy is not None else None,
        defaults,
    )


def _plural(count: int) -> str:
    return f"{count} GPU unit" + ("" if count == 1 else "s")


def units_message(limit: int, held: int, waiting: int) -> str:
    """The one wording of the units-at-once rule (before the spawn and under the lock).

    With none of the user's servers in line it is core's wording (:func:`quotas.check_spawn`).
    """
    if waiting and limit:
        return (
            f"Your quota allows {_plural(limit)} at once, and another of your servers is already "
            "holding or waiting in line for one. Stop or cancel that server first, or start a "
            "CPU-only server."
        )
    return check_spawn(QuotaPolicy(max_gpu_units=limit), "", True, held, 0.0, datetime.now(timezone.utc)).message


def named_message(limit: int, running: int) -> str:
    return f"Your quota allows {limit} named server(s) at once and you have {running}. Stop one first."


def units_refusal(limit: int | None, held: int, waiting: int) -> Refused | None:
    """Refused when ``held`` + ``waiting`` units leave no room under ``limit``."""
    if limit is None or held + waiting < limit:
        return None
    return Refused("quota-exceeded", units_message(limit, held, waiting))


def decide(choice: Choice, facts: Facts) -> Refused | None:
    """None when the spawn may go ahead, else why not (the profile was checked by :func:`choose`)."""
    policy = choice.policy
    if choice.gpu:
        refused = units_refusal(policy.max_gpu_units, facts.units_held, facts.units_waiting)
        if refused is not None:
            return refused
        # the profile and the units were checked above: this is the budget rule
        budget = check_spawn(policy, choice.slug, True, 0, facts.gpu_seconds_used, facts.now)
        if not budget.ok:
            return Refused(budget.reason, budget.message)
    limit = policy.max_named_servers
    if facts.server_name and limit is not None and facts.named_servers >= limit:
        return Refused("quota-exceeded", named_message(limit, facts.named_servers))
    return None
