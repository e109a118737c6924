"""Plain server-rendered HTML for the admin service; every value is escaped."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.3em .6em}.error{color:#a00}</style>"
)


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def page(prefix: str, title: str, body: str, message: str = "") -> str:
    nav = " | ".join(
        f"<a href='{e(prefix + path)}'>{name}</a>"
        for path, name in (("", "Allocations &amp; usage"), ("quotas", "Quotas"), ("roster", "Roster"))
    )
    note = f"<p class='error'>{e(message)}</p>" if message else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>GPU Hub: {e(title)}</title>{STYLE}"
        f"</head><body><nav>{nav}</nav><h1>{e(title)}</h1>{note}{body}</body></html>"
    )


def _hours(seconds: Any) -> str:
    return "unlimited" if seconds is None else f"{seconds / 3600:.2f} h"


def index(prefix: str, xsrf: str, allocs: list[dict[str, Any]], usage: list[dict[str, Any]]) -> str:
    rows = (
        "".join(
            f"<tr><td>{e(a['user'])}</td><td>{e(a['server'])}</td><td><code>{e(a['unit'])}</code></td>"
            f"<td>{e(a['pool'])}</td><td>{e(a['node'])}</td><td>{e(a['since'])}</td></tr>"
            for a in allocs
        )
        or "<tr><td colspan='6'>No GPU unit is held.</td></tr>"
    )
    users = []
    for u in usage:
        stops = "".join(
            f"<form method='post' action='{e(prefix)}servers/{e(quote(u['user'], safe=''))}"
            f"{'/' + e(quote(s, safe='')) if s else ''}/stop'>{xsrf}"
            f"<button>stop {e(s or 'default')}</button></form>"
            for s in u["servers"]
        )
        used = "?" if u.get("gpu_seconds") is None else _hours(u["gpu_seconds"])
        left = e(u["error"]) if u.get("error") else _hours(u["budget_left_seconds"])
        users.append(
            f"<tr><td>{e(u['user'])}</td><td>{e(', '.join(u['groups']))}</td><td>{e(u['period'])}</td>"
            f"<td>{used}</td><td>{left}</td><td>{stops}</td></tr>"
        )
    return (
        "<h2>GPU units held now</h2><table><tr><th>user</th><th>server</th><th>unit</th><th>pool</th>"
        f"<th>node</th><th>since</th></tr>{rows}</table>"
        "<h2>Usage and budget</h2><table><tr><th>user</th><th>groups</th><th>period</th><th>GPU time used</th>"
        f"<th>budget left</th><th>servers</th></tr>{''.join(users)}</table>"
    )


def _fields(fields: list[str], values: dict[str, Any]) -> str:
    return "".join(
        f"<label>{e(f)} <input name='{e(f)}' value='{e(_show(values.get(f)) if f in values else '')}'></label> "
        for f in fields
    )


def _show(value: Any) -> str:
    if value is None:
        return "unlimited"
    return ", ".join(value) if isinstance(value, list) else str(value)


def quotas(prefix: str, xsrf: str, data: dict[str, Any]) -> str:
    fields = data["fields"]
    out = [
        f"<p>Defaults: <code>{e(data['defaults'])}</code>. A blank field is not set; "
        "'unlimited' means no limit.</p><h2>Groups</h2>"
    ]
    for name, values in data["groups"].items():
        out.append(
            f"<h3>{e(name)}</h3><form method='post' action='{e(prefix)}quotas/groups/"
            f"{e(quote(name, safe=''))}'>{xsrf}{_fields(fields, values)}<button>save</button></form>"
        )
    out.append("<h2>Per-user overrides</h2>")
    for user, values in data["overrides"].items():
        target = f"{e(prefix)}quotas/users/{e(quote(user, safe=''))}"
        out.append(
            f"<h3>{e(user)}</h3><form method='post' action='{target}'>{xsrf}{_fields(fields, values)}"
            f"<button>save</button></form><form method='post' action='{target}/delete'>{xsrf}"
            "<button>remove override</button></form>"
        )
    out.append(
        f"<h3>New override</h3><form method='post' action='{e(prefix)}quotas/users'>{xsrf}"
        f"<label>user <input name='user'></label> {_fields(fields, {})}<button>save</button></form>"
    )
    return "".join(out)


def roster(prefix: str, xsrf: str, text: str = "", report: dict[str, Any] | None = None) -> str:
    out = [
        f"<form method='post' action='{e(prefix)}roster'>{xsrf}<p>One <code>github_username,group</code> per "
        f"line.</p><textarea name='roster' rows='15' cols='60'>{e(text)}</textarea><br><button>import</button>"
        "</form>"
    ]
    if report is not None:
        applied = "".join(
            f"<li>line {e(a['line'])}: {e(a['github_username'])} in {e(a['group'])}</li>"
            for a in report["applied"]
        )
        rejected = "".join(
            f"<li>line {e(r['line'])}: <code>{e(r['row'])}</code>: {e(r['reason'])}</li>"
            for r in report["rejected"]
        )
        out.append(
            f"<h2>Applied ({len(report['applied'])})</h2><ul>{applied}</ul>"
            f"<h2>Rejected ({len(report['rejected'])})</h2><ul class='error'>{rejected}</ul>"
        )
    return "".join(out)
