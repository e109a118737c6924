"""Roster parsing (pure): what admins paste or upload, including spreadsheet exports."""

import pytest

from hub_services.admin.roster import MAX_ROWS, parse_roster


def rows(text):
    good, rejected = parse_roster(text)
    return [(r.line, r.username, r.group) for r in good], [(r.line, r.reason) for r in rejected]


@pytest.mark.parametrize(
    "text, good",
    [
        pytest.param("ann,day1\nbob,day2", [(1, "ann", "day1"), (2, "bob", "day2")], id="plain"),
        pytest.param("\ufeffann,day1\n", [(1, "ann", "day1")], id="excel-utf8-bom"),
        pytest.param("\ufeffgithub_username,group\r\nann,day1\r\n", [(2, "ann", "day1")], id="bom-header-crlf"),
        pytest.param('"ann","org:team"\n"bob" , "day2"', [(1, "ann", "org:team"), (2, "bob", "day2")], id="quoted"),
        pytest.param(
            "Name,GitHub username,E-mail,Group\n"
            '"Lovelace, Ada",Ada-L,ada@example.org,day1\n'
            '"Hopper, Grace",ghopper,,day2\n',
            [(2, "ada-l", "day1"), (3, "ghopper", "day2")],
            id="sheet-with-extra-columns",
        ),
        pytest.param(
            'group,github_username,notes\nday1,ann,"two\nlines"\nday1,bob,\n',
            [(2, "ann", "day1"), (4, "bob", "day1")],
            id="multi-line-cell-keeps-line-numbers",
        ),
        pytest.param("ann,day1,,\nbob,day2,\n,,\n", [(1, "ann", "day1"), (2, "bob", "day2")], id="empty-trailing-cells"),
        pytest.param("github_username;group\nann;day1\n", [(2, "ann", "day1")], id="semicolon-excel-locale"),
        pytest.param("ann\tday1\nbob\tday2\n", [(1, "ann", "day1"), (2, "bob", "day2")], id="tab-separated"),
        pytest.param("# day 1\n\nann,day1\n  # more\n", [(3, "ann", "day1")], id="comments-and-blanks"),
    ],
)
def test_spreadsheet_exports(text, good):
    assert rows(text) == (good, [])


@pytest.mark.parametrize(
    "text, rejected",
    [
        pytest.param('"bob" , "day 1x"', [(1, "'day 1x' is not a group name")], id="quoted-bad-group"),
        pytest.param("a,b,c", [(1, "expected 2 fields (github_username,group), got 3")], id="extra-column-no-header"),
        pytest.param("Name,github_username,group\nAda\n", [(2, "this row has no github_username and no group column")],
                     id="short-row-with-header"),
        pytest.param("ann,day1\nANN,day1", [(2, "duplicate of line 1")], id="duplicate"),
    ],
)
def test_rejections_name_the_line_and_reason(text, rejected):
    got = rows(text)[1]
    assert [line for line, _ in got] == [line for line, _ in rejected]
    for (_, reason), (_, expected) in zip(got, rejected):
        assert reason.startswith(expected)


def test_rejected_row_is_shown_as_written():
    _, rejected = parse_roster('x,y\n"bad user",day1\n')
    assert rejected[0].as_dict()["row"] == '"bad user",day1'


def test_json_rows_keep_their_messages():
    good, rejected = parse_roster(["ann,day1", ["bob", "day2"], {"github_username": "cy", "group": "g"},
                                   {"user": "x"}, ["a", 1], 7, ["a", "b", "c"]])
    assert [(r.username, r.group) for r in good] == [("ann", "day1"), ("bob", "day2"), ("cy", "g")]
    assert [(r.line, r.reason.split(";")[0]) for r in rejected] == [
        (4, "an object needs exactly the keys 'github_username' and 'group'"),
        (5, "github_username and group must be text"),
        (6, "a row is 'github_username,group'"),
        (7, "expected 2 fields (github_username,group), got 3"),
    ]


def test_too_many_rows_and_unreadable_csv():
    many = "github_username,group\n" + "".join(f"u{i},g\n" for i in range(MAX_ROWS + 1))
    assert parse_roster(many)[1][0].reason.startswith(f"a roster may have at most {MAX_ROWS} rows")
    _, rejected = parse_roster("ann," + "x" * 200_000 + ",g")  # over the csv module's field limit
    assert "cannot be read as CSV" in rejected[0].reason
