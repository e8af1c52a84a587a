"""Which rules can possibly fire on an event, decided without running them.

Rules are analysed once, at load time, for *necessary* conditions: the
values cheap single-valued fields must have (``ka.verb in (create, update)``,
``ka.target.resource = pods``, ``not ka.target.subresource exists``).  Two
things are built from them:

* ``RuleIndex``: per event, the tuple of indexed field values is looked up in
  a memo that maps it to the candidate rules, so an event meets only the
  rules that could fire on it and 1,000 rules cost little more than 10.  Each
  candidate carries a residual predicate without the checks the lookup
  already guaranteed.
* ``Prefilter``: the same lookup fed from a header decoded off the raw line
  (``events.header``), so lines no rule can match skip the full JSON decode.
  It asks the index itself, so it is exactly equivalent to decoding.  It
  works on one line, or on a whole block of lines at once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from typing import cast

from msgspec import UNSET

from eventd.engine.ast import And, Check, FieldRef, Node, Not, Or, walk
from eventd.engine.codegen import generate
from eventd.engine.compiler import ValueTest, compile_condition, value_test
from eventd.engine.fields.base import BoundField, FieldDef, FieldSet
from eventd.engine.ruleset import Rule
from eventd.events.header import (
    HEADER_FIELDS,
    HeaderError,
    block_decoder,
    header_decoder,
    is_falco_alert,
    key_reader,
)
from eventd.events.model import FALCO, K8S_AUDIT, Event

#: field name -> the values it must take for the rule to fire (``None``: missing).
Requirements = dict[str, frozenset[str | None]]

_MEMO_LIMIT = 65536
#: The field ``Prefilter``'s kept resources and its block gate read.
_RESOURCE = "ka.target.resource"
#: What ``keep_when`` is given, in order.
_KEEP_FIELDS = ("ka.target.resource", "ka.target.subresource", "ka.verb", "ka.stage")
#: ``keep_when(resource, subresource, verb, stage)``: never skip such an event.
KeepWhen = Callable[[object, object, object, object], bool]


def _static_def(fields: FieldSet, ref: FieldRef) -> FieldDef | None:
    if ref.arg is not None or ref.transformers:
        return None
    return fields.defs.get(ref.name)


def satisfying_values(
    node: Node, keep: Callable[[FieldRef], bool]
) -> tuple[str, frozenset[str | None]] | None:
    """``(field, values)`` when ``node`` tests one kept field only and is true
    exactly when that field's value (``None`` for missing) is in ``values``;
    ``None`` when that cannot be said (other fields, other operators)."""
    if isinstance(node, Check):
        if not keep(node.field):
            return None
        if node.op == "=" and isinstance(node.value, str):
            return node.field.name, frozenset((node.value,))
        if node.op in ("in", "intersects") and isinstance(node.value, tuple):
            return node.field.name, frozenset(node.value)
        return None
    if isinstance(node, Not):
        inner = node.child
        if isinstance(inner, Not):
            return satisfying_values(inner.child, keep)
        if isinstance(inner, Check) and inner.op == "exists" and keep(inner.field):
            return inner.field.name, frozenset((None,))
        return None
    if isinstance(node, And | Or):
        parts = [satisfying_values(c, keep) for c in node.children]
        known = [p for p in parts if p is not None]
        if not parts or len(known) != len(parts) or len({name for name, _ in known}) != 1:
            return None
        sets = [values for _, values in known]
        combined = frozenset.intersection(*sets) if isinstance(node, And) else frozenset.union(*sets)
        return known[0][0], combined
    return None


def necessary_values(node: Node, keep: Callable[[FieldRef], bool]) -> Requirements:
    """Values that fields accepted by ``keep`` must take for ``node`` to be true."""
    exact = satisfying_values(node, keep)
    if exact is not None:
        return {exact[0]: exact[1]}
    if isinstance(node, And):
        merged: Requirements = {}
        for child in node.children:
            for name, allowed in necessary_values(child, keep).items():
                merged[name] = merged[name] & allowed if name in merged else allowed
        return merged
    if isinstance(node, Or):
        parts = [necessary_values(child, keep) for child in node.children]
        common = set(parts[0]).intersection(*parts[1:]) if parts else set()
        return {name: frozenset().union(*(p[name] for p in parts)) for name in common}
    if isinstance(node, Not) and isinstance(node.child, Not):
        return necessary_values(node.child.child, keep)
    return {}


def necessary_tests(
    node: Node, keep: Callable[[FieldRef], bool], fields: FieldSet
) -> dict[str, list[ValueTest]]:
    """Tests that the values of fields accepted by ``keep`` must pass for
    ``node`` to be true, beyond the value sets ``necessary_values`` finds.

    Why: a set cannot say ``not ka.user.name startswith "system:"``, and
    that is what keeps most Secret reads (service accounts, nodes) away from
    the pull-secret rule.  A test is a check on one field (``value_test``),
    or its negation: ``not (a or b)`` needs ``not a`` and ``not b``; an
    ``or`` needs, per field every branch tests, one branch's tests to pass.
    """
    if isinstance(node, Check):
        test = value_test(node, fields) if keep(node.field) else None
        return {} if test is None else {node.field.name: [test]}
    if isinstance(node, And):
        return _all_of(necessary_tests(child, keep, fields) for child in node.children)
    if isinstance(node, Or):
        parts = [necessary_tests(child, keep, fields) for child in node.children]
        common = set(parts[0]).intersection(*parts[1:]) if parts else set()
        return {name: [_any_branch([p[name] for p in parts])] for name in common}
    if isinstance(node, Not):
        inner = node.child
        if isinstance(inner, Not):
            return necessary_tests(inner.child, keep, fields)
        if isinstance(inner, Or):
            return _all_of(necessary_tests(Not(child), keep, fields) for child in inner.children)
        if isinstance(inner, Check) and keep(inner.field):
            test = value_test(inner, fields)
            return {} if test is None else {inner.field.name: [_negated(test)]}
    return {}


def _all_of(parts: Iterable[dict[str, list[ValueTest]]]) -> dict[str, list[ValueTest]]:
    merged: dict[str, list[ValueTest]] = {}
    for part in parts:
        for name, tests in part.items():
            merged.setdefault(name, []).extend(tests)
    return merged


def _any_branch(branches: list[list[ValueTest]]) -> ValueTest:
    return lambda value: any(all(test(value) for test in tests) for tests in branches)


def _negated(test: ValueTest) -> ValueTest:
    return lambda value: not test(value)


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, And):
        return [c for child in node.children for c in _conjuncts(child)]
    return [node]


def residual_condition(node: Node, guaranteed: Requirements, keep: Callable[[FieldRef], bool]) -> Node | None:
    """``node`` without the conjuncts that ``guaranteed`` already makes true.

    The index only offers a rule to events whose indexed fields have values
    in the rule's requirements, so re-testing ``ka.verb = create`` there is
    wasted work.  ``None`` means nothing is left to test.
    """
    kept = []
    for conjunct in _conjuncts(node):
        exact = satisfying_values(conjunct, keep)
        if exact is None or exact[0] not in guaranteed or not guaranteed[exact[0]] <= exact[1]:
            kept.append(conjunct)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else And(tuple(kept))


def _always(_event: Event) -> bool:
    return True


Candidate = tuple[Rule, Callable[[Event], bool]]
#: An audit event's indexed field values read off its routing header: the
#: memo key's, then the per-candidate ones (``RuleIndex.candidates_for``).
Route = tuple[tuple[str | None, ...], tuple[str | None, ...]]
#: A need on a field kept out of the memo key: (position in the field
#: tuple, allowed values).
_Check = tuple[int, frozenset[str | None]]
#: A test a field kept out of the memo key must pass: (position, test).
_Test = tuple[int, ValueTest]
_Entry = tuple[Rule, Callable[[Event], bool], tuple[_Check, ...], tuple[_Test, ...]]
#: A rule left to a bucket's per-event tests: (rule, residual predicate, tests).
_Guarded = tuple[Rule, Callable[[Event], bool], tuple[_Test, ...]]

#: Fields with many distinct values (object names, namespaces, users): a memo
#: keyed on them would mostly miss, so they are checked per candidate with a
#: set lookup instead.
HIGH_CARDINALITY = frozenset({"ka.target.name", "ka.target.namespace", "ka.user.name"})


class RuleIndex:
    """Candidate rules of one source, memoised by the values of indexed fields.

    The memo is keyed on low-cardinality fields (verb, resource, stage...);
    needs on high-cardinality fields are checked per candidate.  Each
    candidate comes with its *residual* predicate: the rule's condition
    minus what the index already guaranteed.
    """

    def __init__(self, rules: Sequence[Rule], fields: FieldSet) -> None:
        self.rules = tuple(rules)

        def indexable(ref: FieldRef) -> bool:
            d = _static_def(fields, ref)
            return d is not None and d.indexable and not d.is_list

        def high_cardinality(ref: FieldRef) -> bool:
            return ref.name in HIGH_CARDINALITY and indexable(ref)

        reqs = [necessary_values(r.condition, indexable) for r in self.rules]
        tests = [necessary_tests(r.condition, high_cardinality, fields) for r in self.rules]
        used = {name for r in reqs for name in r} | {name for t in tests for name in t}
        # Low-cardinality fields a condition merely mentions join the memo key
        # too, for ``_verdict``: ``(pod or workload)`` constrains the
        # subresource although no single value of it is necessary.
        used |= {
            node.field.name
            for rule in self.rules
            for node in walk(rule.condition)
            if isinstance(node, Check) and node.field.name not in HIGH_CARDINALITY and indexable(node.field)
        }
        low = sorted(used - HIGH_CARDINALITY)
        high = sorted(used & HIGH_CARDINALITY)
        #: Indexed fields: the memo's key fields, then the per-candidate ones.
        self.fields: tuple[BoundField, ...] = tuple(fields.bind(FieldRef(n)) for n in (*low, *high))
        #: Their keys in an event's field cache (``Matcher.match_routed``).
        self.tokens = tuple(f.ref.token for f in self.fields)
        self.memo_width = len(low)
        self._memo_names = tuple(low)
        self._fields_set = fields
        self._value_tests: dict[Node, ValueTest | None] = {}
        # Cast: ``indexable`` fields are single-valued text (``FieldDef.indexable``).
        self._getters = tuple(cast("Callable[[Event], str | None]", f.get) for f in self.fields)
        self._allowed = [tuple(r.get(n) for n in low) for r in reqs]
        #: Per rule: what is left of its condition to test (``None``:
        #: nothing), and its needs on the per-candidate fields.
        self._needs: tuple[tuple[Node | None, tuple[_Check, ...], tuple[_Test, ...]], ...] = tuple(
            (
                residual_condition(rule.condition, req, indexable),
                tuple((i, req[n]) for i, n in enumerate(high) if n in req),
                tuple((i, test) for i, n in enumerate(high) for test in test_map.get(n, ())),
            )
            for rule, req, test_map in zip(self.rules, reqs, tests, strict=True)
        )
        #: Entries with their residual predicate, made when first offered (``_entry``).
        self._entries: dict[int, _Entry] = {}
        self.memo: dict[tuple[object, ...], _Bucket] = {}

    def admitted(self, name: str) -> frozenset[str | None] | None:
        """The values of memo field ``name`` with which some rule can fire;
        ``None`` when some rule can fire whatever its value."""
        position = [f.ref.name for f in self.fields[: self.memo_width]].index(name)
        sets = [allowed[position] for allowed in self._allowed]
        known = [s for s in sets if s is not None]
        if not sets or len(known) != len(sets):
            return None
        return frozenset().union(*known)

    def candidates(self, event: Event) -> list[Candidate]:
        values = tuple(get(event) for get in self._getters)
        return self.candidates_for(values[: self.memo_width], values[self.memo_width :])

    def candidates_for(self, low: tuple[str | None, ...], high: tuple[str | None, ...]) -> list[Candidate]:
        """Candidates for the values of ``self.fields`` (memo part, then the rest)."""
        return self.memo_lookup(low).select(high)

    def memo_lookup(self, key: tuple[str | None, ...]) -> _Bucket:
        """Rules whose needs on the memo's key fields ``key`` meets."""
        found = self.memo.get(key)
        if found is None:
            if len(self.memo) >= _MEMO_LIMIT:
                self.memo.clear()
            known = dict(zip(self._memo_names, key, strict=True))
            found = self.memo[key] = _Bucket(
                self._entry(i)
                for i, (rule, allowed) in enumerate(zip(self.rules, self._allowed, strict=True))
                if all(a is None or v in a for a, v in zip(allowed, key, strict=True))
                and self._verdict(rule.condition, known) is not False
            )
        return found

    def _entry(self, position: int) -> _Entry:
        """Rule ``position`` with its residual predicate, made the first time
        a bucket offers the rule: generated code (``engine.codegen``), else
        the closures.  Start-up pays nothing for it, and rules no event
        reaches never."""
        entry = self._entries.get(position)
        if entry is None:
            rule = self.rules[position]
            rest, checks, tests = self._needs[position]
            generated = None if rest is None else generate(rest, self._fields_set)
            predicate = generated or _residual_predicate(rule, rest, self._fields_set)
            entry = self._entries[position] = (rule, predicate, checks, tests)
        return entry

    def _verdict(self, node: Node, known: dict[str, str | None]) -> bool | None:
        """``node`` evaluated on the memo key's values alone: ``False`` when it
        cannot be true whatever the other fields hold, ``True`` when it must
        be, ``None`` when that depends on them.

        Why, beyond ``necessary_values``: a condition like ``(pod or
        workload)`` needs "pods without a subresource, or a workload
        resource", which no per-field value set says, so a kubelet's ``patch
        pods/status`` would otherwise reach every rule written that way.  Run
        once per new memo key and rule, so its cost does not matter.
        """
        if isinstance(node, Check):
            if node.field.name not in known or node.field.arg is not None or node.field.transformers:
                return None
            if node not in self._value_tests:
                self._value_tests[node] = value_test(node, self._fields_set)
            test = self._value_tests[node]
            return None if test is None else test(known[node.field.name])
        if isinstance(node, Not):
            inner = self._verdict(node.child, known)
            return None if inner is None else not inner
        if isinstance(node, And | Or):
            decisive = isinstance(node, Or)  # the value that settles it: True for "or"
            undecided = False
            for child in node.children:
                verdict = self._verdict(child, known)
                if verdict is decisive:
                    return decisive
                undecided = undecided or verdict is None
            return None if undecided else not decisive
        return None


class _Bucket:
    """The rules of one memo key, with needs on high-cardinality fields
    turned into dictionary lookups (namespace -> rules), so a thousand
    per-team rules cost one lookup, not a thousand comparisons.  Rules
    whose only needs there are tests (``necessary_tests``) are *guarded*:
    their tests run per event."""

    __slots__ = ("_guarded", "_keyed", "_plain")

    def __init__(self, entries: Iterable[_Entry]) -> None:
        self._plain: list[Candidate] = []
        self._keyed: dict[int, dict[str | None, list[_Guarded]]] = {}
        self._guarded: list[_Guarded] = []
        for rule, predicate, checks, tests in entries:
            if not checks:
                if tests:
                    self._guarded.append((rule, predicate, tests))
                else:
                    self._plain.append((rule, predicate))
                continue
            (position, allowed), rest = checks[0], checks[1:]
            rest_tests = (*((i, values.__contains__) for i, values in rest), *tests)
            table = self._keyed.setdefault(position, {})
            for value in allowed:
                table.setdefault(value, []).append((rule, predicate, rest_tests))

    def __bool__(self) -> bool:
        return bool(self._plain or self._keyed or self._guarded)

    @property
    def needs_high(self) -> bool:
        """Whether the high-cardinality values decide if any rule is left."""
        return not self._plain and bool(self._keyed or self._guarded)

    def select(self, high: tuple[str | None, ...]) -> list[Candidate]:
        if not self._keyed and not self._guarded:
            return self._plain
        found = list(self._plain)
        for position, table in self._keyed.items():
            for rule, predicate, tests in table.get(high[position], ()):
                if all(test(high[i]) for i, test in tests):
                    found.append((rule, predicate))
        for rule, predicate, tests in self._guarded:
            if all(test(high[i]) for i, test in tests):
                found.append((rule, predicate))
        if len(found) > len(self._plain):
            found.sort(key=lambda c: c[0].order)  # load order decides first-match
        return found


def _residual_predicate(rule: Rule, rest: Node | None, fields: FieldSet) -> Callable[[Event], bool]:
    if rest is None:
        return _always
    if rest is rule.condition:
        return rule.predicate
    return compile_condition(rest, fields)


class Prefilter:
    """Rules a raw line out before the full JSON decode, exactly.

    The line's header (see ``events.header``) gives the values of the
    indexed fields; if the audit index has no candidate rule for them, no
    rule can match the event and the full decode is skipped.  The answer is
    the index's own, so it can never differ from what matching the fully
    decoded event would give.
    """

    __slots__ = (
        "_audit",
        "_event_skippable",
        "_has_falco_rules",
        "_keep_falco",
        "_keep_resources",
        "_keep_when",
        "_missing",
        "_read_high",
        "_read_low",
        "select_block",
        "skippable",
    )

    def __init__(
        self,
        audit: RuleIndex | None,
        has_falco_rules: bool,
        *,
        keep_resources: frozenset[str] = frozenset(),
        keep_when: KeepWhen | None = None,
        keep_falco_alerts: bool = False,
    ) -> None:
        """``keep_resources``: events (with an ``auditID``) about these target
        resources are never skipped, whatever the rules, when ``keep_when``
        (resource, subresource, verb, stage) says so (or always, without it):
        the daemon counts the images of pod and workload writes
        (``image_metrics.may_count``).  ``keep_falco_alerts``: Falco alerts
        are never skipped (the daemon forwards every one of them)."""
        self._audit = audit
        names = () if audit is None else tuple(f.ref.name for f in audit.fields)
        width = 0 if audit is None else audit.memo_width
        self._read_low = key_reader(names[:width])
        self._read_high = key_reader(names[width:])
        self._missing = ((None,) * width, (None,) * (len(names) - width))
        self._has_falco_rules = has_falco_rules
        self._keep_resources = keep_resources
        self._keep_when = keep_when
        self._keep_falco = keep_falco_alerts
        self._event_skippable = self._make_event_skippable()
        self.skippable = self._make_skippable()
        self.select_block = self._make_select_block()

    @classmethod
    def build(
        cls,
        indexes: dict[str, RuleIndex],
        *,
        keep_resources: frozenset[str] = frozenset(),
        keep_when: KeepWhen | None = None,
        keep_falco_alerts: bool = False,
    ) -> Prefilter | None:
        """A prefilter, or None when the index reads a field no header carries."""
        audit = indexes.get(K8S_AUDIT)
        if audit is not None and any(f.ref.name not in HEADER_FIELDS for f in audit.fields):
            return None
        return cls(
            audit,
            FALCO in indexes,
            keep_resources=keep_resources,
            keep_when=keep_when,
            keep_falco_alerts=keep_falco_alerts,
        )

    def _decoded_fields(self) -> tuple[str, ...]:
        """The routing fields a header decoder must read: the index's, plus
        those ``keep_when`` is given when some resources are always kept."""
        names = () if self._audit is None else tuple(f.ref.name for f in self._audit.fields)
        if self._keep_resources:
            names = (*names, *(f for f in _KEEP_FIELDS if f not in names))
        return names

    def _make_skippable(self) -> Callable[[bytes], bool]:
        """``skippable(line)``: True when no rule can match any event in it.

        Anything unusual (not JSON, an array, an ``EventList``, neither an
        audit event nor a Falco alert) is left to the full decoder, which
        reports what is wrong with it.  A closure over locals: this runs for
        every line of every input.
        """
        audit = self._audit
        select = None if audit is None else audit.candidates_for
        missing_low, missing_high = self._missing
        event_skippable = self._event_skippable
        falco_skippable = not (self._has_falco_rules or self._keep_falco)
        decode, unset = header_decoder(self._decoded_fields()), UNSET

        def skippable(line: bytes) -> bool:
            try:
                header = decode(line)
            except HeaderError:
                return False
            if header.kind == "Event":
                # Without an auditID every ka.* field is missing (as in Falco).
                if header.auditID is unset:
                    return select is None or not select(missing_low, missing_high)
                return event_skippable(header)
            if is_falco_alert(header):
                return falco_skippable
            return False

        return skippable

    def _make_event_skippable(self) -> Callable[[object], bool]:
        """``event_skippable(header)``: True when no rule can match the Event
        (with an ``auditID``) whose routing header this is.

        Shared by ``skippable`` and ``select_block``.  Most routing keys
        decide alone, so their verdicts are kept in a table and the index is
        asked once per new key; a key whose rules also need high-cardinality
        values (a namespace, an object name) is judged per header.
        """
        audit = self._audit
        keep, keep_when = self._keep_resources, self._keep_when
        read_resource = operator.attrgetter(HEADER_FIELDS[_RESOURCE])
        read_keep = operator.attrgetter(*(HEADER_FIELDS[f] for f in _KEEP_FIELDS))

        def kept(header: object) -> bool:
            return read_resource(header) in keep and (keep_when is None or keep_when(*read_keep(header)))

        if audit is None:
            if keep:
                return lambda header: not kept(header)
            return lambda _header: True
        read_low, read_high = self._read_low, self._read_high
        verdicts: dict[tuple[str | None, ...], bool] = {}
        memo_names = [f.ref.name for f in audit.fields[: audit.memo_width]]
        # When the routing key holds every value ``keep_when`` is given (the
        # usual case), "kept" is decided once per key, in the verdict table.
        kept_by_key = keep and all(f in memo_names for f in _KEEP_FIELDS)
        positions = [memo_names.index(f) for f in _KEEP_FIELDS] if kept_by_key else []

        def key_kept(key: tuple[str | None, ...]) -> bool:
            values = [key[p] for p in positions]  # in _KEEP_FIELDS' order: the resource first
            return values[0] in keep and (keep_when is None or keep_when(*values))

        def event_skippable(header: object) -> bool:
            key = read_low(header)
            skip = verdicts.get(key)
            if skip is None:
                if kept_by_key and key_kept(key):
                    skip = False
                else:
                    bucket = audit.memo_lookup(key)
                    if bucket.needs_high:
                        return not bucket.select(read_high(header))
                    skip = not bucket
                if len(verdicts) >= _MEMO_LIMIT:
                    verdicts.clear()
                verdicts[key] = skip
            return skip

        if keep and not kept_by_key:

            def skippable_unless_kept(header: object) -> bool:
                return not kept(header) and event_skippable(header)

            return skippable_unless_kept
        return event_skippable

    def _make_select_block(self) -> Callable[[bytes], tuple[int, list[int], list[Route]] | None]:
        """``select_block(block)``: ``(lines, wanted, routes)`` for a block of
        whole lines, each ending with a newline: how many lines it holds, the
        indices of those some rule may match, and for each of them its
        ``Route`` (so that matching it does not read those fields again:
        ``Matcher.match_routed``).  ``None`` when the block cannot be judged
        as a whole; then it goes line by line through ``skippable``.

        Why: ``skippable`` costs a call into msgspec and a few Python steps per
        line, which is most of a scan's time.  Here the block becomes one JSON
        array, by putting a comma after every newline, decoded in one call
        (``events.header.block_decoder``); one field read through a set drops
        most lines (see ``_gate``), and the rest get ``_event_skippable``'s
        verdict, the one ``skippable`` uses too.

        The array decodes only if every line holds exactly one JSON
        document: a comma may not stand inside a document's whitespace, a
        blank line gives two commas in a row, two documents on a line lack
        their comma, a newline cannot be inside a string (JSON forbids raw
        control characters there), and a block of one blank line gives an
        empty array, which is refused.  So header ``i`` is line ``i``, and
        its verdict is the one ``skippable`` gives the line alone.
        """
        audit = self._audit
        names = () if audit is None else tuple(f.ref.name for f in audit.fields)
        decode = block_decoder(self._decoded_fields())
        event_skippable = self._event_skippable
        gate = None if audit is None else self._gate(audit, names[: audit.memo_width], self._keep_resources)
        keep = self._keep_resources

        read_low, read_high = self._read_low, self._read_high

        def select_block(block: bytes) -> tuple[int, list[int], list[Route]] | None:
            array = bytearray(b"[")
            array += block.replace(b"\n", b"\n,")
            array[-1] = 0x5D  # the comma after the last newline becomes "]"
            try:
                headers = decode(array)
            except HeaderError:
                return None
            if not headers:  # one line of whitespace: "[ ]" is an empty array
                return None
            if audit is None and not keep:  # no audit rules: no Event can match
                return len(headers), [], []
            if gate is None:
                candidates: list[int] | range = range(len(headers))
            else:
                read_gate, admits = gate
                candidates = list(compress(range(len(headers)), map(admits, map(read_gate, headers))))
            wanted = [i for i in candidates if not event_skippable(headers[i])]
            routes = [(read_low(headers[i]), read_high(headers[i])) for i in wanted]
            return len(headers), wanted, routes

        return select_block

    @staticmethod
    def _gate(
        audit: RuleIndex, memo_fields: tuple[str, ...], keep: frozenset[str]
    ) -> tuple[Callable[[object], object], Callable[[object], bool]] | None:
        """``(read, admits)`` for a first, cheaper look at one field, or None.

        Every rule needs the target resource to be one of a few values, and
        most audit lines (lease renewals, controller reads) are about other
        resources: reading that one field and testing it against a set drops
        them without building and hashing the whole routing key.
        """
        admitted = audit.admitted(_RESOURCE) if _RESOURCE in memo_fields else None
        if admitted is None:
            return None
        return operator.attrgetter(HEADER_FIELDS[_RESOURCE]), (admitted | keep).__contains__
