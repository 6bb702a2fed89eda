"""The doc runner's comparison: what a ```text block after a ```bash block must match."""

from __future__ import annotations

from tests.doc_runner import blocks, mismatch

PRINTED = """\
Cluster  vm
CA pin   sha256:44ac0e1a22274242f868002531b98b057a2bdae11172fead9698096ea7a84bbf
Name   URI             Labels
------ --------------- -------
aurora localhost:54321 env=dev
"""


def test_placeholders_and_table_widths_match() -> None:
    expected = """
Cluster  <HOST>
CA pin   <PIN>
Name   URI              Labels
------ ---------------- -------
aurora localhost:<PORT> env=dev
"""
    assert mismatch(expected, PRINTED + "\n\n") is None
    assert mismatch(expected.replace("<PORT>", "<*>"), PRINTED) is None


def test_drift_is_caught_line_by_line() -> None:
    exact = PRINTED.replace("vm", "<HOST>").replace("54321", "<PORT>")
    exact = exact.replace("sha256:44ac0e1a22274242f868002531b98b057a2bdae11172fead9698096ea7a84bbf", "<PIN>")
    assert mismatch(exact, PRINTED) is None
    assert mismatch(exact.replace("env=dev", "env=prod"), PRINTED) == (
        "line 5: expected 'aurora localhost:<PORT> env=prod', printed 'aurora localhost:54321 env=dev'"
    )
    assert mismatch(exact + "one more line\n", PRINTED) is not None  # a line the program no longer prints
    assert mismatch(exact, PRINTED + "a new line\n") is not None  # a line the page does not show
    assert mismatch(exact.replace("CA pin", "CA pins"), PRINTED) is not None
    assert mismatch(exact.replace("CA pin", "CA  pin"), PRINTED) is None  # a run of spaces is any run
    assert mismatch("<TOKEN>", "0123456789abcdef") is not None  # 32 hex digits, not 16


def test_any_lines_and_job_notices() -> None:
    printed = "Scan this:\n█▀▀█\n█▄▄█\n\nSecret: JBSWY3DPEHPK3PXPJBSWY3DP\n[1]+  Done    pteleport dev\n"
    assert mismatch("Scan this:\n<...>\nSecret: <SECRET>\n", printed) is None
    assert mismatch("Scan this:\n<...>\nSecret: <SECRET>\nmore\n", printed) is not None


def test_a_text_block_is_the_output_of_the_bash_block_before_it() -> None:
    page = "```bash\necho hi\n```\n\nSome prose.\n\n```text\nhi\n```\n\n```ini\nx = 1\n```\n```bash\ntrue\n```\n"
    found = blocks(page)
    assert [(b.body, b.expected) for b in found] == [("echo hi\n", "hi\n"), ("true\n", None)]
    assert found[1].line == 14
