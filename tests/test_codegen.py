"""Generated condition functions (``engine.codegen``) against the closures and
the reference interpreter of ``test_compiler``: same verdicts, same fields
read in the same order, nothing of the rule text in the generated source."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventd.engine import codegen
from eventd.engine.ast import And, Check, FieldRef, Node, Not, Or
from eventd.engine.codegen import MAX_CHECKS, MAX_DEPTH, generate
from eventd.engine.compiler import compile_condition
from eventd.engine.index import RuleIndex
from eventd.engine.loader import load_rules_text
from eventd.events.model import Event
from tests.test_compiler import CALLS, FIELDS, docs, list_checks, ref_eval, reference_trees, scalar_checks


def _generated(tree: Node):
    predicate = generate(tree, FIELDS)
    assert predicate is not None
    assert predicate.__code__.co_filename == "<eventd condition>"
    return predicate


def _verdicts_and_reads(predicate, doc: dict) -> tuple[bool, bool, list[str]]:
    """Verdict on a fresh event, verdict again with its field cache full, and
    the extractors the first evaluation called, in order."""
    CALLS.clear()
    event = Event("test", doc)
    first = predicate(event)
    reads = list(CALLS)
    return first, predicate(event), reads


@given(tree=reference_trees, docs=st.lists(docs, min_size=1, max_size=6))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_predicates_agree_with_the_closures_and_the_reference(tree, docs):
    generated = _generated(tree)
    closures = compile_condition(tree, FIELDS)
    for doc in docs:
        expected = ref_eval(tree, doc)
        got_first, got_cached, got_reads = _verdicts_and_reads(generated, doc)
        want_first, want_cached, want_reads = _verdicts_and_reads(closures, doc)
        assert got_first is got_cached is expected, doc
        assert want_first is want_cached is expected, doc
        # Short-circuit order: the same fields read, in the same order.
        assert got_reads == want_reads, doc


@given(check=st.one_of(scalar_checks(), list_checks()), docs=st.lists(docs, min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_single_generated_checks_agree_with_the_reference(check, docs):
    generated = _generated(check)
    for doc in docs:
        assert _verdicts_and_reads(generated, doc)[0] is ref_eval(check, doc), doc


def test_typed_values_take_the_predicate_not_the_inline_string_test():
    # ``in`` is inlined as a set lookup for strings only: numbers and
    # booleans compare as the predicate says (1 = "0x1", true = "true").
    for value, rhs, expected in [
        (1, ("0x1",), True),
        (2, ("0x1",), False),
        (True, ("true",), True),
        ("1", ("0x1",), False),
        ("a", ("a", "b"), True),
    ]:
        check = Check(FieldRef("t.n"), "in", rhs)
        assert _generated(check)(Event("test", {"n": value})) is expected, (value, rhs)
        assert ref_eval(check, {"n": value}) is expected


def test_rule_text_never_enters_the_source(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(codegen, "_compiled", lambda source: seen.append(source) or codegen._compile(source))
    hostile = '"), __import__("os").system("false"), ("'
    tree = And((Check(FieldRef("t.s"), "=", hostile), Check(FieldRef("t.s"), "contains", "x\n\\")))
    predicate = _generated(tree)
    assert predicate(Event("test", {"s": hostile})) is False
    assert predicate(Event("test", {"s": hostile + "x\n\\"})) is False
    assert Check(FieldRef("t.s"), "contains", "x\n\\") in tree.children
    assert len(seen) == 1
    assert hostile not in seen[0] and "x\n" not in seen[0]


def test_rules_of_one_shape_share_one_code_object():
    a = _generated(And((Check(FieldRef("t.s"), "=", "a"), Not(Check(FieldRef("t.n"), "exists")))))
    b = _generated(And((Check(FieldRef("t.s"), "=", "zzz"), Not(Check(FieldRef("t.n"), "exists")))))
    assert a.__code__ is b.__code__
    assert a(Event("test", {"s": "a"})) is True
    assert b(Event("test", {"s": "a"})) is False


def test_long_sources_are_not_kept():
    codegen._cached_compile.cache_clear()
    many = Or(tuple(Check(FieldRef("t.s"), "=", str(i)) for i in range(400)))
    predicate = _generated(many)
    assert predicate(Event("test", {"s": "399"})) is True
    assert codegen._cached_compile.cache_info().currsize == 0
    _generated(Check(FieldRef("t.s"), "=", "a"))
    assert codegen._cached_compile.cache_info().currsize == 1


def test_deep_or_huge_conditions_are_left_to_the_closures():
    leaf: Node = Check(FieldRef("t.s"), "exists")
    deep = leaf
    for _ in range(MAX_DEPTH + 1):
        deep = Not(deep)
    assert generate(deep, FIELDS) is None
    assert generate(Or((leaf,) * (MAX_CHECKS + 1)), FIELDS) is None
    shallow = leaf
    for _ in range(MAX_DEPTH - 1):
        shallow = Not(shallow)
    assert _generated(shallow)(Event("test", {"s": "x"})) is compile_condition(shallow, FIELDS)(
        Event("test", {"s": "x"})
    )


RULES = """
- rule: pods created
  desc: d
  condition: ka.verb = create and ka.target.resource = pods and ka.user.name startswith "dev-"
  output: o
  priority: WARNING
  source: k8s_audit
"""


def test_the_rule_index_offers_generated_predicates():
    ruleset = load_rules_text([("rules.yaml", RULES)])
    index = RuleIndex(ruleset.rules, _audit_fields())
    # Before any event, nothing is generated (start-up pays nothing).
    assert not index._entries
    ((rule, predicate),) = index.candidates_for(
        *_route(index, {"ka.verb": "create", "ka.target.resource": "pods", "ka.user.name": "dev-1"})
    )
    assert rule.name == "pods created"
    assert predicate.__code__.co_filename == "<eventd condition>"
    assert index._entries


def _audit_fields():
    from eventd.engine.fields import default_registry

    return default_registry().fieldset("k8s_audit")


def _route(index: RuleIndex, values: dict[str, str]) -> tuple[tuple, tuple]:
    names = [f.ref.name for f in index.fields]
    ordered = tuple(values.get(n) for n in names)
    return ordered[: index.memo_width], ordered[index.memo_width :]


def test_the_rule_index_falls_back_to_the_closures(monkeypatch):
    import eventd.engine.index as index_module

    monkeypatch.setattr(index_module, "generate", lambda node, fields: None)  # as for a declined condition
    index = RuleIndex(load_rules_text([("rules.yaml", RULES)]).rules, _audit_fields())
    route = {"ka.verb": "create", "ka.target.resource": "pods", "ka.user.name": "dev-1"}
    ((rule, predicate),) = index.candidates_for(*_route(index, route))
    assert rule.name == "pods created"
    assert predicate.__code__.co_filename != "<eventd condition>"
    assert predicate(Event("k8s_audit", {"auditID": "a", "user": {"username": "dev-1"}})) is True
    assert predicate(Event("k8s_audit", {"auditID": "a", "user": {"username": "ops"}})) is False
