"""Templates as an attacker (or a careless model repository) writes them: endless loops and values that explode,
triggered by a word in the data (one record pays: `template_timeout`, `template_output_too_large`) or always
(the setup probe fails: exit 2, one line naming the template). Each run is under the memory and time caps, so
a budget that does not hold fails the test instead of hanging it or eating the machine."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest
from lossmask.pipeline.templates import ChatTemplate

from ..support import FIXTURE_TOKENIZER
from .harness import (
    MEMORY_CAP,
    TIME_CAP,
    cap_memory,
    child_env,
    conversation,
    jsonl,
    prepare_capped,
    run_capped,
    setup_error,
)

CHATML = json.loads((FIXTURE_TOKENIZER / "tokenizer_config.json").read_text())["chat_template"]

# Each trap, as a Jinja statement run once per message whose content holds the word BOOM.
ENDLESS = "{%- for i in range(100000) %}{%- for j in range(100000) %}{%- endfor %}{%- endfor %}"
TRAPS = {
    "nested_range_loops": (ENDLESS, "template_timeout"),
    # No call inside the loops: only the deadline check at each loop step stops it off the main thread.
    "loop_without_calls": (
        "{%- set xs = range(100000) %}{%- for i in xs %}{%- for j in xs %}{%- endfor %}{%- endfor %}",
        "template_timeout",
    ),
    "repeat_by_star": ("{{- 'a' * 10**10 }}", "template_output_too_large"),
    "doubling_by_plus": (
        "{%- set ns = namespace(s='ab') %}{%- for i in range(64) %}{%- set ns.s = ns.s + ns.s %}{%- endfor %}"
        "{{- ns.s }}",
        "template_output_too_large",
    ),
    "doubling_by_tilde": (
        "{%- set ns = namespace(s='ab') %}{%- for i in range(64) %}{%- set ns.s = ns.s ~ ns.s %}{%- endfor %}",
        "template_output_too_large",
    ),
    "ljust": ("{{- 'x'.ljust(10**10) }}", "template_output_too_large"),
    "join_of_many": ("{{- ([m['content'] * 1000] * 100000) | join }}", "template_output_too_large"),
    "format_width": ("{{- '%10000000000s' | format('x') }}", "template_output_too_large"),
    "output_by_loop": ("{%- for i in range(100000) %}{{- m['content'] * 1000 }}{%- endfor %}", None),
}


def trapped(trap: str, always: bool = False) -> str:
    """The fixture's ChatML template with `trap` run first: for messages holding BOOM, or always."""
    condition = "true" if always else "'BOOM' in (m['content'] | string)"
    return f"{{%- for m in messages %}}{{%- if {condition} %}}{trap}{{%- endif %}}{{%- endfor %}}\n" + CHATML


def _slow_if_timeout(names):
    """The traps that take the default template_timeout (5 s) to spring are slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if TRAPS[n][1] == "template_timeout" else n for n in names]


@pytest.mark.parametrize("name", _slow_if_timeout(TRAPS))
def test_a_trap_in_a_template_costs_the_record_that_springs_it(tmp_path, name):
    trap, reason = TRAPS[name]
    template = tmp_path / f"{name}.jinja"
    template.write_text(trapped(trap))
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("fine"), conversation("say BOOM"), conversation("also fine")))
    started = time.monotonic()
    run = prepare_capped(tmp_path, [data], "--chat-template", str(template))
    assert time.monotonic() - started < 20
    assert (run.counts["read"], run.counts["written"]) == (3, 2)
    reject = run.reject_at(f"{data}:2")
    assert reject["reason"] == (reason or "template_output_too_large")
    assert str(template) in reject["detail"]  # the template is named
    if reason == "template_timeout":
        assert "longer than 5 s" in reject["detail"]  # the default
    else:
        assert "template_max_chars is" in reject["detail"] or "template_max_chars)" in reject["detail"]


@pytest.mark.slow
def test_template_timeout_is_the_users_to_set(tmp_path):
    template = tmp_path / "endless.jinja"
    template.write_text(trapped(ENDLESS))
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("say BOOM"), conversation("fine")))
    started = time.monotonic()
    run = prepare_capped(tmp_path, [data], "--chat-template", str(template), "--template-timeout", "0.5")
    assert time.monotonic() - started < 4  # not the default's 5 s
    assert "longer than 0.5 s" in run.reject_at(f"{data}:1")["detail"]


def test_template_max_chars_is_the_users_to_set(tmp_path):
    """A legitimate rendering over a small --template-max-chars is refused with that limit; the default takes it."""
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("x" * 5000), conversation("short")))
    tight = prepare_capped(tmp_path, [data], "--template-max-chars", "4000", out_name="tight")
    assert tight.rejected() == {f"{data}:1": "template_output_too_large"}
    assert "template_max_chars is 4,000" in tight.rejects[0]["detail"]
    assert prepare_capped(tmp_path, [data], out_name="default").counts["written"] == 2


@pytest.mark.slow
def test_a_worker_stuck_in_a_rendering_costs_one_record(tmp_path):
    """With worker processes (forkserver; the alarm runs in each worker's main thread): the endless record is
    template_timeout, every other record is written once, in order."""
    template = tmp_path / "endless.jinja"
    template.write_text(trapped(ENDLESS))
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(*(conversation("say BOOM" if k == 5 else f"question {k}") for k in range(12))))
    run = prepare_capped(tmp_path, [data], "--chat-template", str(template), "--batch-size", "1", workers=2)
    assert (run.counts["read"], run.counts["written"]) == (12, 11)
    assert run.rejected() == {f"{data}:6": "template_timeout"}
    table = ds.dataset(str(run.out), format="arrow").to_table(columns=["record_index"])
    assert table.column("record_index").to_pylist() == [k for k in range(12) if k != 5]


@pytest.mark.parametrize("name", _slow_if_timeout(["nested_range_loops", "repeat_by_star", "doubling_by_plus"]))
def test_a_template_that_always_springs_its_trap_fails_the_probe(tmp_path, name):
    """exit 2, one line that names the template and the reason, within the time cap (default timeout: 5 s)."""
    trap, reason = TRAPS[name]
    template = tmp_path / f"{name}.jinja"
    template.write_text(trapped(trap, always=True))
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(conversation("fine")))
    options = ["--chat-template", str(template)]
    started = time.monotonic()
    run = run_capped(
        ["prepare", str(data), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(tmp_path / "o"), *options]
    )
    line = setup_error(run)
    assert time.monotonic() - started < 20
    assert str(template) in line
    assert ("longer than 5 s" if reason == "template_timeout" else "template_max_chars") in line


# Renders a template off the main thread, where no SIGALRM can reach it, and prints what came of it.
_OFF_THREAD = """
import json, sys, threading, time
from lossmask.errors import RecordError
from lossmask.pipeline.templates import ChatTemplate
from lossmask.pipeline.templates.limits import RenderLimits

template = ChatTemplate("trap", sys.stdin.read(), limits=RenderLimits(timeout=0.5))
outcome = {}

def render():
    try:
        template.render([{"role": "user", "content": "BOOM"}, {"role": "assistant", "content": "a"}])
        outcome["reason"] = None
    except RecordError as exc:
        outcome["reason"] = exc.reason

started = time.monotonic()
worker = threading.Thread(target=render, daemon=True)
worker.start()
worker.join(10)
outcome["alive"], outcome["seconds"] = worker.is_alive(), time.monotonic() - started
outcome["after"] = template.render([{"role": "user", "content": "fine"}])
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("name", list(TRAPS))
def test_the_budget_holds_off_the_main_thread(name):
    """Off the main thread there is no SIGALRM (Ray's and other engines' threads): the deadline checks in loops,
    calls and outputs must hold alone. In a capped child, so that a budget that fails cannot eat the machine."""
    trap, reason = TRAPS[name]
    done = subprocess.run(
        [sys.executable, "-c", _OFF_THREAD],
        input=trapped(trap),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=TIME_CAP,
        preexec_fn=lambda: cap_memory(MEMORY_CAP),
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    outcome = json.loads(done.stdout)
    assert not outcome["alive"], "the rendering did not stop"
    assert outcome["seconds"] < 5
    assert outcome["reason"] == (reason or "template_output_too_large")
    fine = [{"role": "user", "content": "fine"}]
    assert outcome["after"] == ChatTemplate("plain", CHATML).render(fine)  # the template still works


def test_each_check_of_the_budget_holds_on_its_own():
    """The checks back each other up in a template (a loop's start is a call, which checks the deadline too), so
    each is held to its job here alone: loop steps, outputs and calls past the deadline, sizes before building."""
    from lossmask.pipeline.templates.limits import Budget, LimitExceeded, RenderLimits

    expired = Budget(RenderLimits(timeout=1e-9))
    time.sleep(0.001)
    for attempt in (lambda: next(expired.guard(iter(range(3)))), lambda: expired.produce("x"), expired.check_time):
        with pytest.raises(LimitExceeded) as raised:
            attempt()
        assert raised.value.reason == "template_timeout"
    small = Budget(RenderLimits(max_chars=10))
    small.check_size(10, "a value")
    with pytest.raises(LimitExceeded, match="would be 11 long; template_max_chars is 10"):
        small.check_size(11, "a value")
    with pytest.raises(LimitExceeded, match="produced over 40 characters"):
        for _ in range(5):
            small.produce("x" * 9)


_COMPILE = """
import json, resource, sys
from lossmask.errors import RecordError
from lossmask.pipeline.templates import ChatTemplate

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
template = ChatTemplate("constant", sys.stdin.read())
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
try:
    template.render([{"role": "user", "content": "q"}])
    reason = None
except RecordError as exc:
    reason = exc.reason
print(json.dumps({"grown_kib": grown, "reason": reason}))
"""


@pytest.mark.parametrize(
    "expression",
    [
        "'%300000000s' | format('x')",
        "'x' | center(300000000)",
        "'x\\nx' | indent(300000000)",
    ],
)
def test_a_filter_of_constants_is_not_run_when_the_template_compiles(expression):
    """Jinja folds filters of constants while it compiles, outside any rendering's budget: uncapped, a 10 GB
    `format` width filled the machine's memory at job setup. The filters that can make more than they are given
    are never folded: the rendering refuses them. (300 MB here, which the cap allows, so that a fold shows as
    memory instead of failing quietly under the cap and falling back to the rendering.)"""
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE],
        input="{{ " + expression + " }}",
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=TIME_CAP,
        preexec_fn=lambda: cap_memory(MEMORY_CAP),
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["grown_kib"] < 100_000, outcome  # no 300 MB value built at compile time
    assert outcome["reason"] == "template_output_too_large"
