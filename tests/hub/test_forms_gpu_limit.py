"""The spawn form says which kind of GPU limit a profile's pool has (MPS-enforced, or a hint)."""

from __future__ import annotations

from gpuhub_spawner.core import mps
from gpuhub_spawner.core.inventory import CPU_PROFILE, Profile
from gpuhub_spawner.hub.forms import render_options_form

SHARED = Profile("shared", "Shared GPU", pool="shared", description="A slot of a GPU.", default=True)
WHOLE = Profile("gpu", "Whole GPU", pool="gpu")
PROFILES = [SHARED, WHOLE, CPU_PROFILE]
COUNTS = ({"shared": 3, "gpu": 1}, {"shared": 4, "gpu": 1}, {})


def row(html: str, slug: str) -> str:
    start = html.rindex('<div class="radio', 0, html.index(f'value="{slug}"'))
    return html[start : html.index("</div>", start)]


def test_each_shared_pool_says_its_kind_of_limit_and_other_pools_say_none():
    limits = mps.slot_limits(40960, 4)
    for enforce, says in (("mps", "enforced by MPS: about 9.8 GiB, and 25%"), ("hints", "not enforced")):
        html = render_options_form(PROFILES, *COUNTS, limit_notes={"shared": mps.limit_note(enforce, limits)})
        assert 'class="gpuhub-gpu-limit"' in row(html, "shared") and says in row(html, "shared")
        assert "gpuhub-gpu-limit" not in row(html, "gpu") + row(html, "cpu")
    assert "gpuhub-gpu-limit" not in render_options_form(PROFILES, *COUNTS)  # no notes: as before


def test_the_note_is_escaped():
    html = render_options_form(PROFILES, *COUNTS, limit_notes={"shared": "<b>5 GiB</b> & more"})
    assert "&lt;b&gt;5 GiB&lt;/b&gt; &amp; more" in row(html, "shared") and "<b>5" not in html
