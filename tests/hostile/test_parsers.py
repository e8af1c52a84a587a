"""Hostile input against the pure parsers: rule files, conditions, outputs,
audit JSON, Falco JSON, image references.

Each parser has one documented way to refuse input (``RuleError``,
``DecodeError``, an invalid ``ImageRef``...).  Anything else escaping —
``RecursionError``, ``ValueError`` from ``int()``, ``TypeError`` from a
JSON encoder — is a crash of whatever called it, and any input that makes a
parser run for seconds is a hang.  So every property here asserts both: only
the documented error, after work bounded by the input's size (counted in
calls, see ``tests.hostile``; a hang guard stops a stuck run).  Each bug the
fuzzers found was fixed, and the input that exposed it is kept as an
explicit case below, so it is tried on every run, not by chance.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event

from eventd.alerts import build_alert, falco_passthrough_alert
from eventd.engine.ast import FieldRef
from eventd.engine.errors import ConditionSyntaxError, RuleError
from eventd.engine.fields import default_registry
from eventd.engine.loader import load_rules, load_rules_text
from eventd.engine.matcher import Matcher
from eventd.engine.output import OutputFormat
from eventd.engine.parser import parse_condition
from eventd.events.decode import decode_document, decode_object
from eventd.events.errors import DecodeError
from eventd.events.falco_json import falco_alert_event
from eventd.events.header import HeaderError, decode_header
from eventd.events.model import Event
from eventd.events.wrappers import unwrap
from eventd.images import (
    MAX_REFERENCE_LENGTH,
    ImageReferenceError,
    normalize_prefix,
    parse,
)
from eventd.rulepacks import builtin_rule_files
from tests.hostile import HANG_GUARD, at_most_steps, linear
from tests.support.builders import audit_event, falco_alert, lease_renewal, pod
from tests.test_wrappers import aks_record, gke_entry

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Calls one fuzzed input may cost (small inputs; loading the built-in packs included).
FUZZ_STEPS = linear(0, base=20_000_000)
pytestmark = pytest.mark.timeout(HANG_GUARD)
BUILTIN = [(str(p), p.read_text(encoding="utf-8")) for p in builtin_rule_files()]
#: Python refuses ``int()`` of longer digit strings (CVE-2020-10735 guard).
BIG_DIGITS = "9" * 5000


def _deep(depth: int, open_: bytes = b"[", close: bytes = b"]", inner: bytes = b"") -> bytes:
    return open_ * depth + inner + close * depth


_MATCHER: list[Matcher] = []


def builtin_matcher() -> Matcher:
    if not _MATCHER:
        _MATCHER.append(Matcher(load_rules(builtin_rule_files()), rule_matching="all"))
    return _MATCHER[0]


def match_and_render(events: list[Event], matcher: Matcher | None = None) -> list[str]:
    """Match and build every alert as the pipeline does; no rule may raise."""
    matcher = matcher or builtin_matcher()
    before = sum(matcher.errors.values())
    names = []
    for ev in events:
        if ev.source == "falco":
            falco_passthrough_alert(ev).to_json()
        for rule in matcher.match(ev):
            build_alert(rule, ev, "node-1").to_json()
            names.append(rule.name)
    assert sum(matcher.errors.values()) == before, f"a rule raised: {matcher.errors}"
    return names


def load_only_rule_errors(sources: list[tuple[str, str]]) -> Any:
    """Load, accepting ``RuleError`` as the only refusal; the rule set or None."""
    with at_most_steps(FUZZ_STEPS):
        try:
            ruleset = load_rules_text(sources)
        except RuleError:
            ruleset = None
    if currently_in_test_context():  # shows how deep the fuzzing gets (--hypothesis-show-statistics)
        event("refused" if ruleset is None else f"loaded with rules: {bool(ruleset.rules)}")
    return ruleset


# ===================================================================== rule files

_FIELDS = ["ka.verb", "ka.target.resource", "ka.req.pod.images.name", "ka.user.name", "container.image.tag"]
_OPS = [
    "=",
    "!=",
    "<",
    ">=",
    "in",
    "intersects",
    "pmatch",
    "contains",
    "startswith",
    "glob",
    "regex",
    "exists",
]
_VALUES = [
    "create",
    "(a, b)",
    "(l0)",
    "1",
    "0x1f",
    '"x y"',
    "'q'",
    "val(ka.verb)",
    "tolower(ka.verb)",
    "(",
    "",
]


#: Characters outside ASCII that parsers get wrong: accented letters, non-ASCII
#: digits (``str.isdigit`` is true for them, ``int`` takes some), Unicode
#: spaces and line breaks, a byte-order mark, an emoji, a lone surrogate.
NON_ASCII = "é²٣\uff11\u00a0\u3000\u2028\u0085\ufeff\U0001f600\ud800"
_CONDITION_CHARS = "()ka.verb =!<>,'\"\\ notandor[]0" + NON_ASCII


@st.composite
def conditions(draw: st.DrawFn) -> str:
    """Conditions built from real pieces, joined well or badly."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(draw(st.sampled_from(["m0", "m1", "m2", "undefined_macro"])))
        elif kind == 1:
            op = draw(st.sampled_from(_OPS))
            value = "" if op == "exists" else draw(st.sampled_from(_VALUES))
            parts.append(f"{draw(st.sampled_from(_FIELDS))} {op} {value}")
        else:
            parts.append(draw(st.text(alphabet=_CONDITION_CHARS, max_size=16)))
    joints = st.sampled_from([" and ", " or ", " and not ", " or (", ") and ", " "])
    out = parts[0]
    for part in parts[1:]:
        out += draw(joints) + part
    return out


_words = st.sampled_from(["a", "b", "l0", "l1", "create", "", "x y", "(", "'", '"']) | st.text(max_size=6)
_list_items = st.lists(_words, max_size=5)
_priorities = st.sampled_from(["INFO", "Warning", "critical", "EMERGENCY", "bogus", "", BIG_DIGITS[:10]])
_sources = st.sampled_from(["k8s_audit", "falco", "syscall", "aws_cloudtrail", ""])
_outputs = st.sampled_from(
    ["x", "%ka.verb", "%20ka.user.name by %ka.user.name", "%", "%nope.field", "%toupper("]
)
_exceptions = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["e1", "e2", ""])},
        optional={
            "fields": st.sampled_from(["ka.verb", ["ka.verb", "ka.user.name"], [], "nope.field"]),
            "comps": st.sampled_from(["=", ["in", "="], "bogus", []]),
            "values": st.lists(st.lists(_words, max_size=3) | _words, max_size=3),
        },
    ),
    max_size=3,
)
_overrides = st.dictionaries(
    st.sampled_from(["condition", "output", "exceptions", "items", "priority", "enabled", "tags", "desc"]),
    st.sampled_from(["append", "replace", "bogus"]),
    max_size=3,
)
_list_item = st.fixed_dictionaries(
    {"list": st.sampled_from(["l0", "l1", "l2", "bad name", ""]), "items": _list_items},
    optional={"append": st.booleans(), "override": _overrides},
)
_macro_item = st.fixed_dictionaries(
    {"macro": st.sampled_from(["m0", "m1", "m2", "1bad"]), "condition": conditions()},
    optional={"append": st.booleans(), "override": _overrides},
)
_GOOD_CHECKS = [
    "ka.verb = create", "ka.verb in (create, delete)", "ka.target.resource = pods", "m0", "not m1",
    "ka.req.pod.images.name pmatch (docker.io/library)", "ka.user.name startswith system:",
    "not ka.target.subresource exists", "ka.req.pod.images.registry intersects (evil.io)",
    "ka.response.code >= 200", "tolower(ka.verb) = create", "ka.verb in (l0)", "ka.verb = val(ka.verb)",
]  # fmt: skip


@st.composite
def good_conditions(draw: st.DrawFn) -> str:
    checks = draw(st.lists(st.sampled_from(_GOOD_CHECKS), min_size=1, max_size=4))
    out = checks[0]
    for check in checks[1:]:
        out = f"({out}){draw(st.sampled_from([' and ', ' or ', ' and not ']))}{check}"
    return out


_good_exceptions = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["e1", "e2"]),
            "fields": st.just(["ka.verb", "ka.user.name"]),
            "comps": st.just(["=", "in"]),
            "values": st.lists(st.tuples(_words, st.lists(_words, max_size=3)).map(list), max_size=3),
        }
    ),
    max_size=2,
    unique_by=lambda e: e["name"],
)
_good_rule_item = st.fixed_dictionaries(
    {
        "rule": st.sampled_from(["r0", "r1", "r2"]),
        "desc": st.just("d"),
        "condition": good_conditions(),
        "output": st.sampled_from(["x", "%ka.verb", "%20ka.user.name by %toupper(ka.user.name)"]),
        "priority": st.sampled_from(["INFO", "Warning", "critical"]),
        "source": st.just("k8s_audit"),
    },
    optional={"exceptions": _good_exceptions, "enabled": st.booleans(), "tags": st.lists(_words, max_size=3)},
)
_rule_item = _good_rule_item | st.fixed_dictionaries(
    {"rule": st.sampled_from(["r0", "r1", "r2"])},
    optional={
        "desc": st.text(max_size=8),
        "condition": conditions() | good_conditions(),
        "output": _outputs,
        "priority": _priorities,
        "source": _sources,
        "enabled": st.sampled_from([True, False, "maybe"]),
        "tags": st.lists(_words, max_size=3) | st.just("notalist"),
        "exceptions": _exceptions | _good_exceptions,
        "append": st.booleans(),
        "override": _overrides,
        "skip-if-unknown-filter": st.booleans(),
    },
)
_good_macro_item = st.fixed_dictionaries(
    {
        "macro": st.sampled_from(["m0", "m1"]),
        # Macros may name themselves or each other (cycles, forward references).
        "condition": good_conditions(),
    }
)
_good_list_item = st.fixed_dictionaries({"list": st.sampled_from(["l0", "l1"]), "items": _list_items})
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
_any_yaml = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["rule", "macro", "list", "items", "condition"]) | st.text(max_size=5), inner
        )
    ),
    max_leaves=25,
)
_items = st.one_of(
    _list_item,
    _macro_item,
    _rule_item,
    st.fixed_dictionaries({"required_engine_version": st.sampled_from(["0.10.0", "99.0.0", "x", "12", 3])}),
    st.fixed_dictionaries({"required_plugin_versions": st.just([{"name": "k8saudit", "version": "0.1.0"}])}),
    _any_yaml,
)


@FUZZ
@given(
    st.lists(_good_list_item | _good_macro_item, max_size=4).flatmap(
        lambda head: (
            st.lists(_good_rule_item | _items, max_size=5).map(lambda tail: head + tail)
            | st.lists(_good_rule_item, min_size=1, max_size=3).map(lambda tail: head + tail)
        )
    )
    | _any_yaml
)
def test_random_rule_documents_raise_only_rule_errors(doc: Any) -> None:
    ruleset = load_only_rule_errors([("fuzz.yaml", yaml.safe_dump(doc, allow_unicode=True))])
    if ruleset is not None and ruleset.rules:
        # Whatever loaded must also run: no predicate may raise on real events.
        events = decode_object([audit_event(request=pod("evil.io/x:1")), lease_renewal()])[0]
        events.append(falco_alert_event(falco_alert()))
        match_and_render(events, Matcher(ruleset, rule_matching="all"))


_MUTATION_TOKENS = st.sampled_from(
    [
        "[", "]", "{", "}", ":", "- ", "  ", "\t", "&a ", "*a", "!!binary ", "? ", "|", ">", "%", "#",
        "'", '"', "\\", "\x00", "\ufeff", "\u2028", "\r", "\n", "---\n", "...\n", "~", ",", "(", ")",
        "and", "or not", "%ka.", "in (", "val(", "tolower(", "0x", "1e5",
    ]
)  # fmt: skip


@st.composite
def mutated_builtin(draw: st.DrawFn) -> list[tuple[str, str]]:
    """The built-in packs with one file cut, spliced and sprinkled with YAML/rule syntax."""
    index = draw(st.integers(0, len(BUILTIN) - 1))
    name, text = BUILTIN[index]
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.integers(0, 4))
        if op == 0:
            text = text[:at] + draw(_MUTATION_TOKENS) + text[at:]
        elif op == 1:
            text = text[:at] + text[at + draw(st.integers(1, 80)) :]
        elif op == 2 and text:
            lines = text.splitlines(keepends=True)
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif op == 3:
            text = text[:at]
        else:
            text = text[:at] + text[max(0, at - 200) : at] + text[at:]
    sources = list(BUILTIN)
    sources[index] = (name, text)
    return sources


@FUZZ
@given(mutated_builtin())
def test_mutated_builtin_rule_packs_raise_only_rule_errors(sources: list[tuple[str, str]]) -> None:
    ruleset = load_only_rule_errors(sources)
    if ruleset is not None and ruleset.rules:
        events = decode_object([audit_event(request=pod("evil.io/x:1", "nginx")), lease_renewal()])[0]
        match_and_render(events, Matcher(ruleset, rule_matching="all"))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="-:[]{}&*!|>'\"#%? \t\nabrulemacolistd.=()" + NON_ASCII, max_size=120))
def test_random_yaml_text_raises_only_rule_errors(text: str) -> None:
    load_only_rule_errors([("junk.yaml", text)])


def _rule(condition: str = "ka.verb = create", output: str = "x", extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        - rule: r
          desc: d
          condition: {condition}
          output: {output}
          priority: INFO
          source: k8s_audit
        """
        )
        + extra
    )


def test_huge_values_in_a_rule_file_load_or_are_refused() -> None:
    big = "x" * 1_000_000
    cases = [
        _rule(condition=f"ka.user.name = {big}"),
        _rule(condition=f'ka.user.name = "{big}"'),
        _rule(condition="ka.verb in (" + ", ".join(["v"] * 50_000) + ")"),
        _rule(condition=" and ".join(["ka.verb = create"] * 20_000)),
        _rule(condition="not " * 200_000 + "ka.verb = create"),
        _rule(condition="(" * 200_000),
        _rule(output=f"'%ka.verb {big}'"),
        _rule(output="'" + "%ka.verb" * 20_000 + "'"),
        f"- list: l\n  items: [{', '.join(['i'] * 100_000)}]\n" + _rule(condition="ka.verb in (l)"),
        "- list: " + big + "\n  items: []\n",
        "&a " + "[*a]" * 10,  # an alias of itself: refused, not followed forever
    ]
    for text in cases:
        load_only_rule_errors([("big.yaml", text)])


def test_aliases_are_shared_not_expanded() -> None:
    # A "billion laughs" document: nine levels of ten aliases each.
    lines = ['- &l0 ["lol"]']
    lines += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    with pytest.raises(RuleError), at_most_steps(FUZZ_STEPS):  # not rule items: refused quickly
        load_rules_text([("laughs.yaml", "\n".join(lines))])


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        "- rule: " + "{a: " * 10_000 + "1" + "}" * 10_000,
        "".join(" " * i + "-\n" for i in range(0, 2000)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_deeply_nested_rule_yaml_is_a_rule_error(text: str) -> None:
    with pytest.raises(RuleError), at_most_steps(FUZZ_STEPS):
        load_rules_text([("deep.yaml", text)])


def test_very_deeply_nested_rule_yaml_does_not_kill_the_process(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000 + "]" * 100_000)
    script = (
        "import sys\n"
        "from eventd.engine.errors import RuleError\n"
        "from eventd.engine.loader import load_rules\n"
        "try:\n"
        f"    load_rules([{str(path)!r}])\n"
        "except (RuleError, OSError):\n"
        "    sys.exit(0)\n"
        "except RecursionError:\n"
        "    sys.exit(3)\n"
        "sys.exit(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.decode()[-300:]}"


def test_invalid_utf8_rule_file_is_a_rule_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"- rule: \xff\xfe\n  desc: d\n")
    with pytest.raises((RuleError, OSError)):
        load_rules([path])


@pytest.mark.parametrize(
    "text",
    [
        _rule(condition=f"ka.verb = {BIG_DIGITS}"),
        _rule(condition=f"ka.response.code < {BIG_DIGITS}"),
        _rule(condition=f"ka.verb in (a, {BIG_DIGITS})"),
        _rule(condition=f"ka.req.pod.containers.image[{BIG_DIGITS}] = x"),
        _rule(output=f"'%ka.req.pod.containers.image[{BIG_DIGITS}]'"),
        f"- required_engine_version: {BIG_DIGITS}\n",
        f"- required_engine_version: 0.{BIG_DIGITS}.0\n",
        f"- required_plugin_versions:\n  - name: k8saudit\n    version: 0.{BIG_DIGITS}.0\n",
    ],
    ids=["eq", "lt", "in", "index", "output-index", "engine", "engine-semver", "plugin"],
)
def test_huge_numbers_in_rules_are_rule_errors(text: str) -> None:
    with pytest.raises(RuleError):
        load_rules_text([("digits.yaml", text)])


def test_huge_output_width_is_a_rule_error() -> None:
    with pytest.raises(RuleError):
        load_rules_text([("width.yaml", _rule(output=f"'%{BIG_DIGITS}ka.verb'"))])


def test_deeply_nested_output_transformers_are_a_rule_error() -> None:
    output = "'%" + "tolower(" * 5000 + "ka.verb" + ")" * 5000 + "'"
    with pytest.raises(RuleError):
        load_rules_text([("nested.yaml", _rule(output=output))])


def _doubling_macros(levels: int) -> str:
    items = ["- macro: m0\n  condition: ka.verb = create\n"]
    items += [f"- macro: m{i}\n  condition: (m{i - 1} and m{i - 1})\n" for i in range(1, levels + 1)]
    return "".join(items) + _rule(condition=f"m{levels}")


def _doubling_lists(levels: int) -> str:
    items = [f"- list: l{i}\n  items: [l{i + 1}, l{i + 1}]\n" for i in range(levels)]
    items.append(f"- list: l{levels}\n  items: [x]\n")
    return "".join(items) + _rule(condition="ka.verb in (l0)")


def test_doubling_macros_and_lists_of_moderate_depth_load() -> None:
    for text in (_doubling_macros(8), _doubling_lists(8)):
        assert load_only_rule_errors([("ok.yaml", text)]) is not None


@pytest.mark.parametrize("build", [_doubling_macros, _doubling_lists], ids=["macros", "lists"])
def test_exponential_rule_files_are_refused_not_hung(build: Any) -> None:
    # 2**40 copies if expanded; level 8 loads in about 10**4 calls.
    with pytest.raises(RuleError), at_most_steps(5_000_000):
        load_rules_text([("bomb.yaml", build(40))])


# ===================================================================== conditions and outputs


@settings(max_examples=200, deadline=None)
@given(conditions())
def test_generated_conditions_raise_only_syntax_errors(text: str) -> None:
    with at_most_steps(FUZZ_STEPS), contextlib.suppress(ConditionSyntaxError):
        parse_condition(text)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 1_000_000,
        "not " * 500_000 + "a.b exists",
        "a.b = " + "x" * 1_000_000,
        'a.b = "' + "\\n" * 500_000 + '"',
        'a.b = "' + "x" * 1_000_000,  # unterminated
        "a.b in (" + "x," * 300_000 + "x)",
        "a.b in (" + "x," * 300_000,  # unclosed
        " and ".join(["a.b = 1"] * 50_000),
        "a.b < " + "9" * 1_000_000,
        "tolower(" * 100_000 + "a.b) = x",
        "a.b[" + "x" * 1_000_000,
    ],
    ids=lambda t: f"{t[:12]!r}x{len(t)}",
)
def test_huge_conditions_parse_or_fail_fast(text: str) -> None:
    with at_most_steps(linear(len(text))), contextlib.suppress(ConditionSyntaxError):
        parse_condition(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="%ka.verbusername[]()\"' 0123456789tolower(toupper" + NON_ASCII, max_size=60))
def test_random_outputs_compile_or_raise_rule_errors_and_render(text: str) -> None:
    fields = default_registry().fieldset("k8s_audit")
    with at_most_steps(FUZZ_STEPS):
        try:
            fmt = OutputFormat.compile(text, fields)
        except RuleError:
            return
        (event,), _ = decode_object(audit_event(request=pod("nginx")))
        line, values = fmt.render(event)
    assert isinstance(line, str) and isinstance(values, dict)


# ===================================================================== audit JSON

_HOSTILE_JSON_TOKENS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", str(2**70).encode(), str(-(2**70)).encode(),
    b'"\\ud800"', b'"\\udc00x"', b'"\\ud800\\u0041"', b'"\xff\xfe"', b'"\xed\xa0\x80"', b'"\xc0\xaf"',
    b"\x00", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"null", b"true", b'"kind":"Event"',
    b'"verb":"create"', b'"resource":"pods"', b"  ", b"\n", b"\xef\xbb\xbf", b'"rule":"r"',
]  # fmt: skip


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """Realistic audit lines, GKE/AKS records and Falco alerts with hostile bytes spliced in."""
    base = draw(
        st.sampled_from(
            [
                audit_event(request=pod("evil.io/app:1", "nginx")),
                audit_event(resource="secrets", verb="get"),
                audit_event(request=pod("nginx@sha256:" + "a" * 64), stage="ResponseStarted"),
                lease_renewal(),
                falco_alert(),
                {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [audit_event()]},
                gke_entry(request=pod("evil.io/gke:1")),
                {
                    "records": [
                        aks_record(audit_event(request=pod("evil.io/aks:1"))),
                        aks_record(orjson.dumps(audit_event(request=pod("evil.io/aks:2"))).decode()),
                    ]
                },
            ]
        )
    )
    line = orjson.dumps(base)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(line)))
        if draw(st.booleans()):
            line = line[:at] + draw(st.sampled_from(_HOSTILE_JSON_TOKENS)) + line[at:]
        else:
            line = line[:at] + line[at + draw(st.integers(1, 12)) :]
    return line


@FUZZ
@given(mutated_lines())
def test_mutated_lines_decode_or_raise_decode_error_and_prefilter_is_sound(line: bytes) -> None:
    matcher = builtin_matcher()
    assert matcher.prefilter is not None
    with at_most_steps(FUZZ_STEPS):
        skippable = matcher.prefilter.skippable(line)  # never raises
        try:
            events, errors = decode_document(line)
        except DecodeError as err:
            assert err.reason and str(err)
            event(f"refused: {err.reason}")
            return
        assert all(isinstance(e, DecodeError) for e in errors)
        names = match_and_render(events)
    event(f"decoded; skippable: {skippable}; alerts: {bool(names)}")
    # Soundness: a line the prefilter skips can never have raised an alert.
    assert not (skippable and names), f"prefilter skipped a line that alerts: {names}"


@FUZZ
@given(mutated_lines())
def test_header_decoder_raises_only_its_documented_errors(line: bytes) -> None:
    with at_most_steps(FUZZ_STEPS), contextlib.suppress(*HeaderError):
        decode_header(line)


_event_line = orjson.dumps(audit_event(request=pod("evil.io/app:1")))


@pytest.mark.parametrize(
    "line",
    [
        _deep(10_000),
        _deep(10_000, b"{", b"}"),
        _deep(10_000, b'{"a":', b"}", b"1"),
        _event_line[:-1] + b',"x":' + _deep(10_000) + b"}",
        _event_line.replace(b"kubectl", b"kube\xffctl"),  # invalid UTF-8
        _event_line.replace(b'"pods"', b'"\xed\xa0\x80"'),  # UTF-8-encoded surrogate
        _event_line.replace(b'"web"', b'"\\ud800"'),  # lone high surrogate
        _event_line.replace(b'"web"', b'"\\udc00"'),  # lone low surrogate
        _event_line.replace(b"201", b"NaN"),
        _event_line.replace(b"201", b"Infinity"),
        _event_line.replace(b"201", b"1e400"),
        _event_line + b"x",
        b"",
        b"\xef\xbb\xbf" + _event_line,  # a BOM is not JSON
    ],
    ids=[
        "deep-array", "deep-braces", "deep-object", "deep-in-event", "invalid-utf8", "encoded-surrogate",
        "lone-high-surrogate", "lone-low-surrogate", "nan", "infinity", "1e400", "trailing", "empty", "bom",
    ],
)  # fmt: skip
def test_hostile_json_is_a_json_decode_error_everywhere(line: bytes) -> None:
    with at_most_steps(FUZZ_STEPS):
        with pytest.raises(DecodeError) as err:
            decode_document(line)
        assert err.value.reason == "json"
        # The header decoder refuses it too (or at least never raises), and
        # the prefilter leaves it to the decoder so that it is counted.
        with contextlib.suppress(*HeaderError):
            decode_header(line)
        assert not builtin_matcher().prefilter.skippable(line)  # type: ignore[union-attr]
        # AKS carries the Event as a JSON string: the same text inside it
        # (a Python string cannot hold invalid UTF-8, so those cases stop here).
        with contextlib.suppress(UnicodeDecodeError):
            record = {"category": "kube-audit", "properties": {"log": line.decode("utf-8")}}
            with pytest.raises(DecodeError):
                decode_object(record)


def test_values_json_allows_are_decoded_consistently() -> None:
    big = orjson.loads(_event_line.replace(b"201", str(2**70).encode()))
    dup = _event_line.replace(b'"verb":"create"', b'"verb":"delete","verb":"create"')
    (event,), _ = decode_document(orjson.dumps(big))
    assert event.doc["responseStatus"]["code"] == float(2**70)
    (event,), _ = decode_document(dup)
    assert event.doc["verb"] == "create"  # the last duplicate wins, in the header too
    assert decode_header(dup).verb == "create"
    assert match_and_render([event]) == ["Image From Untrusted Registry"]


def test_python_structures_deeper_than_json_allows_are_handled() -> None:
    # decode_object takes already-decoded data (Kafka, wrappers): no depth limit there.
    deep: Any = "leaf"
    for _ in range(10_000):
        deep = {"a": [deep]}
    doc = audit_event(request=pod("evil.io/app:1"), extra=deep)
    with at_most_steps(FUZZ_STEPS):
        (event,), _ = decode_object(doc)
        assert match_and_render([event]) == ["Image From Untrusted Registry"]
        assert unwrap({"category": "kube-audit", "properties": {"log": doc}}) is not None


def test_a_pod_with_5000_containers_gives_every_field_in_order() -> None:
    images = [f"registry-{i % 7}.example.com:5000/team/app-{i}:v{i}" for i in range(5000)]
    images[4321] = "evil.io/x@sha256:" + "b" * 64
    doc = audit_event(request=pod(*images, init=tuple(images[:100])))
    with at_most_steps(linear(len(images) + 100, per_unit=2_000)):
        (event,), _ = decode_document(orjson.dumps(doc))
        fields = default_registry().fieldset("k8s_audit")

        def get(name: str, arg: str | None = None) -> Any:
            return fields.bind(FieldRef(name, arg)).get(event)

        assert get("ka.req.pod.containers.image") == tuple(images)
        assert get("ka.req.pod.containers.image", "4999") == (images[4999],)
        assert get("ka.req.pod.containers.image.registry", "4321") == ("evil.io",)
        assert get("ka.req.pod.containers.image.pinned", "4321") == ("true",)
        assert len(get("ka.req.pod.images.name")) == 5100
        assert get("ka.req.pod.images.registry")[5099] == "registry-1.example.com:5000"
        assert get("ka.req.pod.containers.name")[-1] == "c4999"
        assert "Image From Untrusted Registry" in match_and_render([event])


def test_megabyte_strings_in_fields_are_kept_whole() -> None:
    big = "u" * 1_000_000
    doc = audit_event(user=big, request=pod("evil.io/" + "a" * 1_000_000))
    with at_most_steps(FUZZ_STEPS):
        (event,), _ = decode_document(orjson.dumps(doc))
        fields = default_registry().fieldset("k8s_audit")
        assert fields.bind(FieldRef("ka.user.name")).get(event) == big
        valid = fields.bind(FieldRef("ka.req.pod.images.valid")).get(event)
        assert valid == ("false",)  # longer than any reference can be
        match_and_render([event])


# ===================================================================== Falco JSON

_falco_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        ["Critical", "info", "EMERGENCY", " notice ", "", "2026-11-29T13:44:05Z", "0000-01-01T00:00:00Z",
         "9999-12-31T23:59:60.999999999+23:59", "1970-01-01T00:00:00Z", "2026-13-40T25:61:61Z"]
    ),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(), max_size=4),
)  # fmt: skip
_falco_docs = st.dictionaries(
    st.sampled_from(
        ["rule", "priority", "time", "output", "output_fields", "tags", "source", "hostname", "kind"]
    ),
    _falco_values,
    max_size=9,
)


@FUZZ
@given(_falco_docs, st.sampled_from([True, False]))
def test_falco_alerts_validate_or_raise_decode_error(doc: dict[str, Any], complete: bool) -> None:
    if complete:  # start from a valid alert so that single bad keys are reached
        doc = {**falco_alert(), **doc}
        doc.pop("kind", None)
    with at_most_steps(FUZZ_STEPS):
        try:
            event = falco_alert_event(doc)
        except DecodeError as err:
            assert err.reason in {"not_falco", "rule", "priority", "time", "shape"}
            return
        assert isinstance(event.doc["output_fields"], dict) and isinstance(event.doc["tags"], list)
        assert isinstance(event.doc["source"], str) and event.doc["source"]
        match_and_render([event])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"time": "0000-01-01T00:00:00Z"}, "time"),
        ({"time": "1970-01-01T00:00:00Z"}, "time"),
        ({"time": "2026-11-29T13:44:05." + "9" * 1_000_000 + "Z"}, None),
        ({"time": "x" * 1_000_000}, "time"),
        ({"rule": "r" * 1_000_000}, None),
        ({"rule": " \t\n"}, "rule"),
        ({"priority": "p" * 1_000_000}, "priority"),
        ({"priority": 4}, "priority"),
        ({"tags": ["t"] * 100_000}, None),
        ({"output_fields": {f"f{i}": i for i in range(100_000)}}, None),
    ],
    ids=lambda v: str(v)[:24],
)
def test_hostile_falco_alert_values(change: dict[str, Any], reason: str | None) -> None:
    with at_most_steps(FUZZ_STEPS):
        if reason is None:
            match_and_render([falco_alert_event({**falco_alert(), **change})])
        else:
            with pytest.raises(DecodeError) as err:
                falco_alert_event({**falco_alert(), **change})
            assert err.value.reason == reason


def test_falco_alert_too_deep_to_forward_is_rejected_on_its_own() -> None:
    # orjson reads 1024 levels but writes only 255: an alert that could not be
    # forwarded as JSON is refused at decode time with a reason, not mid-batch.
    line = orjson.dumps(falco_alert())[:-2] + b',"deep":' + _deep(300) + b"}}"
    with pytest.raises(DecodeError) as info:
        decode_document(line)
    assert info.value.reason == "shape"
    shallow = orjson.dumps(falco_alert())[:-2] + b',"deep":' + _deep(200) + b"}}"
    (event,), _ = decode_document(shallow)
    assert orjson.loads(falco_passthrough_alert(event).to_json())["rule"]


# ===================================================================== image references

_RUN_PIECES = [
    "a", "0", "-", "_", "__", ".", "/", ":", "@", "a-", "a.", "a_", "a/", "A", "é", "[", "]", ":1",
    "sha256:", "\n", "a-b.", "[::1]", "::", "localhost:5000/", "@sha256:" + "a" * 64,
]  # fmt: skip


@st.composite
def long_runs(draw: st.DrawFn) -> str:
    """Long runs of the pieces a backtracking reference grammar chokes on."""
    pieces = draw(
        st.lists(st.tuples(st.sampled_from(_RUN_PIECES), st.integers(1, 3000)), min_size=1, max_size=4)
    )
    text = "".join(piece * count for piece, count in pieces)
    cut = draw(st.sampled_from([MAX_REFERENCE_LENGTH, MAX_REFERENCE_LENGTH - 1, 2048, len(text)]))
    return text[:cut]


def _check_reference(raw: str) -> None:
    # A handful of calls whatever the length: the length is checked first,
    # and the patterns run on at most MAX_REFERENCE_LENGTH characters.
    with at_most_steps(2_000):
        ref = parse(raw)
        assert ref.raw == raw and ref.valid == (ref.error is None)
        if ref.valid:
            again = parse(ref.normalized)  # type: ignore[arg-type]
            assert again.valid and again.name == ref.name
        with contextlib.suppress(ImageReferenceError):
            normalize_prefix(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_runs())
def test_long_runs_in_image_references_finish_fast(raw: str) -> None:
    _check_reference(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))
    | st.text(st.characters(exclude_categories=()), max_size=80)
)
def test_arbitrary_bytes_and_surrogates_never_break_image_parsing(raw: str) -> None:
    _check_reference(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "a" * (MAX_REFERENCE_LENGTH - 1) + "!",
        "a-" * (MAX_REFERENCE_LENGTH // 2 - 1) + "!",
        ("a" * 30 + "-") * (MAX_REFERENCE_LENGTH // 31),
        "a" * 2000 + "/" + "b" * 2000 + "!",
        "a." * 2000 + "x:" + "1" * 40 + "/b!",
        "a/" * (MAX_REFERENCE_LENGTH // 2 - 1) + "!",
        "a@" + "a-" * 2000 + ":",
        "a@sha256:" + "0" * 4000 + "g",
        "[" + ":" * 4000 + "]/a",
        "x" * 10_000_000,
    ],
    ids=lambda r: f"{r[:10]!r}x{len(r)}",
)
def test_worst_case_references_finish_fast(raw: str) -> None:
    _check_reference(raw)
