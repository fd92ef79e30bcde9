"""State vocabularies: plain words everywhere, the policy sets, one colour per word."""

from __future__ import annotations

import json
import pickle

import pytest

from lokt_tasks import states
from lokt_tasks.results import OUTCOMES
from lokt_tasks.states import (
    COLORS,
    FAILED_OUTCOMES,
    FAILED_STATES,
    FINISHED_OUTCOMES,
    INCOMPLETE_STATES,
    PASSED_OUTCOMES,
    RAN_OUTCOMES,
    RERUN_BY_FAILED,
    SHOW_LOG_OUTCOMES,
    SHOW_LOG_STATES,
    GuardState,
    OverallVerdict,
    Progress,
    RecordOutcome,
    RunOutcome,
    ShardState,
    ordered,
)
from lokt_tasks.verdict import STATES

VOCABULARIES = (GuardState, RecordOutcome, RunOutcome, Progress, ShardState, OverallVerdict)
MEMBERS = [member for vocabulary in VOCABULARIES for member in vocabulary]


def test_every_vocabulary_holds_the_words_written_today():
    # Records, JSON and other modules (run.py, engine.py, the attempt process) use
    # these words as plain strings: the values must never change.
    assert [str(s) for s in GuardState] == [
        "ran",
        "held",
        "frozen",
        "interrupted",
        "skipped",
        "error",
    ]
    assert [str(s) for s in RecordOutcome] == [
        "running",
        "passed",
        "failed",
        "interrupted",
        "error",
        "timed-out",
        "waiting",
    ]
    assert [str(s) for s in RunOutcome] == [
        "passed",
        "failed",
        "interrupted",
        "held",
        "frozen",
        "error",
        "done",
        "lost",
        "timed-out",
    ]
    assert [str(s) for s in Progress] == ["waiting", "running"]
    assert [str(s) for s in ShardState] == [
        "passed",
        "failed",
        "timed-out",
        "running",
        "crashed",
        "interrupted",
        "missing",
        "outdated",
        "corrupt",
        "waiting",
    ]
    assert [str(s) for s in OverallVerdict] == ["passed", "failed", "incomplete"]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda member: repr(member))
def test_a_member_is_its_plain_word_in_text_and_json(member):
    word = member.value
    assert isinstance(member, str) and member == word and hash(member) == hash(word)
    assert str(member) == word
    assert f"{member}" == word and f"{member:>12}|" == f"{word:>12}|"
    assert format(member, "<11") == format(word, "<11")
    assert "%s" % member == word and f"{member}" == word
    assert ", ".join([member]) == word and member.upper() == word.upper()
    assert json.dumps({member: [member]}) == json.dumps({word: [word]})
    assert json.dumps({member: member}, indent=2) == json.dumps({word: word}, indent=2)
    assert type(member)(word) is member
    assert pickle.loads(pickle.dumps(member)) is member


def test_plain_words_find_members_and_members_find_plain_words():
    assert {"passed": 1}[ShardState.PASSED] == 1
    assert {ShardState.FAILED: 1}["failed"] == 1
    assert "failed" in RERUN_BY_FAILED and RecordOutcome.PASSED in {"passed"}


def test_record_outcomes_are_the_records_vocabulary():
    assert OUTCOMES == tuple(RecordOutcome)
    assert STATES == tuple(ShardState)


def test_failed_reruns_everything_but_a_pass_and_a_live_run():
    # A new ShardState must be placed on purpose: rerun by --failed or not.
    live = {ShardState.RUNNING, ShardState.WAITING}
    assert RERUN_BY_FAILED == frozenset(ShardState) - {ShardState.PASSED} - live
    assert ordered(RERUN_BY_FAILED) == (
        "failed",
        "timed-out",
        "crashed",
        "interrupted",
        "missing",
        "outdated",
        "corrupt",
    )


def test_finished_and_passed_outcomes():
    assert PASSED_OUTCOMES < FINISHED_OUTCOMES <= frozenset(RecordOutcome)
    assert ordered(FINISHED_OUTCOMES) == ("passed", "failed", "timed-out")
    assert RecordOutcome.RUNNING not in FINISHED_OUTCOMES
    assert ordered(RAN_OUTCOMES) == ("passed", "failed", "interrupted", "timed-out")


def test_a_timeout_fails_as_a_failure_does():
    assert ordered(FAILED_STATES) == ("failed", "timed-out")
    assert ordered(FAILED_OUTCOMES) == ("failed", "timed-out")
    assert RunOutcome.TIMED_OUT in SHOW_LOG_OUTCOMES and ShardState.TIMED_OUT in SHOW_LOG_STATES


def test_incomplete_is_neither_a_pass_nor_a_failure():
    assert INCOMPLETE_STATES | {ShardState.PASSED} | FAILED_STATES == frozenset(ShardState)
    assert not INCOMPLETE_STATES & (FAILED_STATES | {ShardState.PASSED})


def test_ordered_follows_the_declaration_not_the_set():
    assert ordered({RunOutcome.LOST, RunOutcome.PASSED, RunOutcome.HELD}) == (
        RunOutcome.PASSED,
        RunOutcome.HELD,
        RunOutcome.LOST,
    )
    assert ordered([]) == ()


SHOWN = (RecordOutcome, RunOutcome, Progress, ShardState, OverallVerdict)


def test_every_shown_word_has_one_colour():
    shown = {member.value for vocabulary in SHOWN for member in vocabulary}
    assert shown <= set(COLORS), sorted(shown - set(COLORS))
    assert set(COLORS) - shown == {states.WARNING}


@pytest.mark.parametrize(
    "words, colour",
    [
        (("passed", "done"), "\x1b[32m"),
        (("failed", "timed-out", "crashed", "corrupt", "error", "lost"), "\x1b[31m"),
        (("held", "frozen", "interrupted", "missing", "outdated", "incomplete"), "\x1b[33m"),
        (("running",), "\x1b[36m"),
        (("waiting",), "\x1b[2m"),
    ],
)
def test_colours_say_pass_failure_unfinished_in_progress(words, colour):
    assert {COLORS[word] for word in words} == {colour}


def test_the_colour_map_cannot_be_changed():
    with pytest.raises(TypeError):
        COLORS["passed"] = "\x1b[31m"  # type: ignore[index]


def test_the_colour_codes_written_out_are_coloramas():
    """states needs the standard library only (the attempt process imports it)."""
    import colorama

    for name in ("GREEN", "RED", "YELLOW", "CYAN"):
        assert getattr(states.Fore, name) == getattr(colorama.Fore, name)
    assert states.Style.DIM == colorama.Style.DIM


def test_started_outcomes_are_an_attempt_that_has_not_ended():
    assert ordered(states.STARTED_OUTCOMES) == ("running", "waiting")
    assert not states.STARTED_OUTCOMES & FINISHED_OUTCOMES
    assert ShardState.WAITING in states.WAITED_ON and ShardState.WAITING not in RERUN_BY_FAILED
