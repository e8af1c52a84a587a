"""EVD013: an image rule that looks at ``pods`` only.

Most workloads reach the API server as Deployments, Jobs, CronJobs...;
their pods are created by controllers (as system users) from the template
already admitted.  A rule on ``ka.target.resource=pods`` alone sees those
controller creates but never the user's request that put the image there.
"""

from __future__ import annotations

from collections.abc import Iterator

from eventd.engine.ast import Check
from eventd.lint.checks.imagevalues import field_kind
from eventd.lint.findings import Finding, finding
from eventd.lint.model import Corpus, checks_in

_WORKLOADS = frozenset(
    {"deployments", "daemonsets", "statefulsets", "replicasets", "replicationcontrollers", "jobs", "cronjobs"}
)


def run(corpus: Corpus) -> Iterator[Finding]:
    for rule in corpus.rules():
        tree = corpus.expanded(rule)
        if tree is None:
            continue
        checks = list(checks_in(tree))
        resources: set[str] = set()
        for check in checks:
            if check.field.name == "ka.target.resource" and check.op in ("=", "==", "in"):
                resources.update(v.text for v in corpus.values(check.value, rule))
        if "pods" not in resources or resources & _WORKLOADS:
            continue
        if not any(field_kind(c.field.name) is not None for c in checks if isinstance(c, Check)):
            continue
        yield finding(
            "EVD013",
            rule.file,
            rule.cond_line,
            rule.label,
            "the rule judges images on `pods` only: Deployments, DaemonSets, StatefulSets, Jobs and "
            "CronJobs carry the same images in their pod templates, which it never sees",
            "use `ka.target.resource in (pods, deployments, daemonsets, statefulsets, replicasets, "
            "replicationcontrollers, jobs, cronjobs)`: eventd's ka.req.pod.* fields read templates too",
        )
