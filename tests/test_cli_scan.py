"""``eventd scan`` end to end: the real console script, run as a subprocess.

What a user sees is tested here, not the library: alert lines on stdout,
rejected lines and errors on stderr, and the exit status.  Inputs are files
written to ``tmp_path``; the process runs there so that file names in
messages are exactly the names passed on the command line.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.corpus import write_corpus
from tests.support.builders import audit_event, deployment, falco_alert, lease_renewal, pod_create

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "audit-sample.jsonl"
UNTRUSTED_PACK = ROOT / "rules" / "untrusted_registry.yaml"
FALCO_PRIORITIES = {"Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"}
ALERT_KEYS = {"time", "rule", "priority", "source", "output", "output_fields", "tags", "hostname", "uuid"}
TEXT_LINE = re.compile(
    r"(\d{2}):(\d{2}):(\d{2})\.(\d{9}): "
    r"(Emergency|Alert|Critical|Error|Warning|Notice|Informational|Debug) \S.*"
)
MODULE = (sys.executable, "-m", "eventd")

UNTRUSTED = "Image From Untrusted Registry"
NO_TAG = "Image Without Tag Or Latest"
IP_OR_PORT = "Image From IP Address Or Non-Standard Port Registry"
PULL_SECRET = "Image Pull Secret Read By Non-System User"
FALCO_UNTRUSTED = "Falco Alert In Container From Untrusted Registry"

#: What the built-in packs report on the sample with ``rule_matching: first``:
#: (audit ID or Falco rule of the event, rule), in input order.
MINER = "00000000-0000-4000-8000-000000000003"  # pod from evil.example.com
WEB = "00000000-0000-4000-8000-000000000005"  # deployment with a :latest image
DEBUG = "00000000-0000-4000-8000-000000000006"  # pod from 10.0.0.5:5000
API_2 = "00000000-0000-4000-8000-000000000007"  # pod from myregistry.io.evil.com
REGCRED = "00000000-0000-4000-8000-000000000008"  # get of the pull secret
FALCO_SHELL = "Terminal shell in container"  # Falco alert in a quay.io/evil container
SAMPLE_FIRST = [
    (MINER, UNTRUSTED),
    (WEB, NO_TAG),
    (DEBUG, UNTRUSTED),
    (API_2, UNTRUSTED),
    (REGCRED, PULL_SECRET),
    (FALCO_SHELL, FALCO_UNTRUSTED),
]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


class Pending:
    """A started ``eventd`` process; several can run at once to keep the suite fast."""

    def __init__(
        self, args: Sequence[str | Path], cwd: Path, stdin: bytes | None, exe: Sequence[str]
    ) -> None:
        env = dict(os.environ, COLUMNS="200")  # keep rich tables on one line per row
        self.proc = subprocess.Popen(
            [*exe, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
        )
        self.stdin = stdin or b""

    def wait(self) -> Result:
        out, err = self.proc.communicate(self.stdin, timeout=120)
        return Result(self.proc.returncode, out.decode(), err.decode())


def start(*args: str | Path, cwd: Path, stdin: bytes | None = None, exe: Sequence[str] = MODULE) -> Pending:
    return Pending(args, cwd, stdin, exe)


def eventd(*args: str | Path, cwd: Path, stdin: bytes | None = None, exe: Sequence[str] = MODULE) -> Result:
    return start(*args, cwd=cwd, stdin=stdin, exe=exe).wait()


def write_lines(path: Path, items: Sequence[bytes | dict[str, Any] | list[Any]]) -> Path:
    path.write_bytes(b"".join((i if isinstance(i, bytes) else orjson.dumps(i)) + b"\n" for i in items))
    return path


def identity(alert: dict[str, Any]) -> str:
    """The audit ID, or the Falco rule, of the event that raised ``alert``."""
    ctx = alert["eventd"]
    return ctx.get("audit_id") or ctx["falco_rule"]


def pairs(result: Result) -> list[tuple[str, str]]:
    return [(identity(a), a["rule"]) for a in result.alerts]


def untrusted_pod(name: str, **kw: Any) -> dict[str, Any]:
    return pod_create("evil.example.com/miner:1", name=name, **kw)


# ------------------------------------------------------------------- output


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The sample scanned with the defaults (built-in packs, JSON, first match)."""
    return eventd("scan", "--hostname", "scan-host", SAMPLE, cwd=tmp_path_factory.mktemp("sample"))


def test_json_alerts_on_the_sample_are_falco_shaped_and_deterministic(
    tmp_path: Path, sample_scan: Result
) -> None:
    first = eventd("scan", "--format", "json", "--hostname", "scan-host", SAMPLE, cwd=tmp_path)
    assert first.rc == 0, first.err
    assert first.err == ""
    alerts = first.alerts
    assert pairs(first) == SAMPLE_FIRST
    for alert in alerts:
        assert alert.keys() >= ALERT_KEYS
        assert alert["priority"] in FALCO_PRIORITIES
        assert isinstance(alert["output_fields"], dict)
        assert isinstance(alert["tags"], list) and all(isinstance(t, str) for t in alert["tags"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z", alert["time"])
        assert str(uuid.UUID(alert["uuid"])) == alert["uuid"]
        assert alert["output"].startswith(f"{alert['time'][11:29]}: {alert['priority']} ")
    assert {a["source"] for a in alerts} == {"k8s_audit", "falco"}
    # Audit events get --hostname; a Falco alert keeps the host it came from.
    assert [a["hostname"] for a in alerts] == ["scan-host"] * 5 + ["node-1"]
    assert alerts[0]["time"] == "2026-11-29T10:00:00.123456000Z"
    assert alerts[-1]["time"] == "2026-11-29T13:44:05.478445995Z"
    assert len({a["uuid"] for a in alerts}) == len(alerts)
    assert first.out == sample_scan.out  # --format json is the default

    # The installed console script gives byte-identical output: same uuids.
    exe = shutil.which("eventd")
    if exe is None:
        pytest.skip("the eventd console script is not on PATH")
    second = eventd("scan", "--hostname", "scan-host", SAMPLE, cwd=tmp_path, exe=(exe,))
    assert second.rc == 0, second.err
    assert second.out == first.out


def test_text_format_prints_falco_lines(tmp_path: Path, sample_scan: Result) -> None:
    text = eventd("scan", "--format", "text", SAMPLE, cwd=tmp_path)
    assert text.rc == 0, text.err
    lines = text.out.splitlines()
    assert len(lines) == len(SAMPLE_FIRST)
    for line in lines:
        assert TEXT_LINE.fullmatch(line), line
    assert lines == [a["output"] for a in sample_scan.alerts]
    assert lines[0].startswith("10:00:00.123456000: Warning Image from untrusted registry (user=alice")
    assert lines[-1].startswith("13:44:05.478445995: Error Falco alert in container")


# ------------------------------------------------------------------- inputs


def test_gzip_is_detected_by_content_and_several_files_scan_in_order(tmp_path: Path) -> None:
    packed = gzip.compress(SAMPLE.read_bytes())
    (tmp_path / "audit.jsonl.gz").write_bytes(packed)
    (tmp_path / "rotated.log").write_bytes(packed)  # compressed, but not named .gz
    shutil.copy(SAMPLE, tmp_path / "plain.jsonl")
    result = eventd("scan", "plain.jsonl", "audit.jsonl.gz", "rotated.log", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert result.err == ""
    assert pairs(result) == SAMPLE_FIRST * 3


def test_stdin_is_read_for_dash(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    runs = [
        start("scan", "-", cwd=tmp_path, stdin=data),
        start("scan", "-", cwd=tmp_path, stdin=gzip.compress(data)),
    ]
    for result in (r.wait() for r in runs):
        assert result.rc == 0, result.err
        assert pairs(result) == SAMPLE_FIRST


def test_eventlists_arrays_v1beta1_and_falco_alerts_on_one_stream(tmp_path: Path) -> None:
    in_list = untrusted_pod("in-list")
    in_array = untrusted_pod("in-array")
    latest = audit_event(resource="deployments", request=deployment("nginx"), name="latest")
    beta = untrusted_pod(
        "beta",
        api_version="audit.k8s.io/v1beta1",
        metadata={"creationTimestamp": "2026-11-29T10:00:00Z"},
        timestamp="2026-11-29T10:00:00Z",
    )
    alert = falco_alert(**{"container.image.repository": "evil.example.com/miner"})
    event_list = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [lease_renewal(), in_list]}
    write_lines(tmp_path / "mixed.jsonl", [event_list, [in_array, lease_renewal(), latest], beta, alert])
    result = eventd("scan", "mixed.jsonl", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert result.err == ""
    assert pairs(result) == [
        (in_list["auditID"], UNTRUSTED),
        (in_array["auditID"], UNTRUSTED),
        (latest["auditID"], NO_TAG),
        (beta["auditID"], UNTRUSTED),
        (FALCO_SHELL, FALCO_UNTRUSTED),
    ]
    assert result.alerts[-1]["hostname"] == "node-1"


def test_bad_line_in_the_middle_is_reported_with_its_number_and_the_scan_goes_on(tmp_path: Path) -> None:
    before, after = untrusted_pod("before"), untrusted_pod("after")
    no_stamp = untrusted_pod("no-stamp")
    del no_stamp["stageTimestamp"]
    in_batch = untrusted_pod("in-batch")
    half_bad = {"kind": "EventList", "items": [no_stamp, in_batch]}
    write_lines(
        tmp_path / "audit.jsonl", [before, lease_renewal(), b'{"kind": "Event", oops', half_bad, after]
    )
    result = eventd("scan", "audit.jsonl", cwd=tmp_path)
    assert result.rc == 0
    assert len(result.err_lines) == 2, result.err
    assert result.err_lines[0].startswith("eventd: audit.jsonl:3: invalid JSON: ")
    assert result.err_lines[1] == "eventd: audit.jsonl:4: audit event without stageTimestamp"
    assert [identity(a) for a in result.alerts] == [before["auditID"], in_batch["auditID"], after["auditID"]]


def test_more_than_twenty_bad_lines_are_summarised(tmp_path: Path) -> None:
    bad = [b"{broken %d" % i for i in range(25)]
    first, last = untrusted_pod("first"), untrusted_pod("last")
    write_lines(tmp_path / "audit.jsonl", [first, *bad, last])
    result = eventd("scan", "audit.jsonl", cwd=tmp_path)
    assert result.rc == 0
    reported = [line for line in result.err_lines if line.startswith("eventd: audit.jsonl:")]
    assert [int(line.split(":")[2]) for line in reported] == list(range(2, 22))
    assert result.err_lines[-1] == "eventd: ... 5 more rejected lines"
    assert len(result.err_lines) == 21
    assert [identity(a) for a in result.alerts] == [first["auditID"], last["auditID"]]


def test_deeply_nested_line_is_reported_not_fatal(tmp_path: Path) -> None:
    deep = orjson.dumps(lease_renewal())[:-1] + b',"x":' + b"[" * 1100 + b"]" * 1100 + b"}"
    before, after = untrusted_pod("before"), untrusted_pod("after")
    write_lines(tmp_path / "audit.jsonl", [before, deep, after])
    result = eventd("scan", "audit.jsonl", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert result.err.startswith("eventd: audit.jsonl:2: invalid JSON")
    assert [identity(a) for a in result.alerts] == [before["auditID"], after["auditID"]]


def _quiet_log_then(tail: list[bytes]) -> list[bytes | dict[str, Any]]:
    """Audit lines no built-in rule can match (all skipped by the prefilter), then ``tail``."""
    return [*(lease_renewal() for _ in range(30)), *tail]


@pytest.mark.parametrize(
    "tail",
    [
        [b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Meta'],
        [b"{bad"] * 20 + [orjson.dumps(untrusted_pod("late"))],
    ],
    ids=["truncated-last-line", "bad-lines-after-skipped-ones"],
)
def test_lines_skipped_by_the_prefilter_are_audit_data(tmp_path: Path, tail: list[bytes]) -> None:
    write_lines(tmp_path / "audit.jsonl", _quiet_log_then(tail))
    runs = [
        start("scan", "audit.jsonl", cwd=tmp_path),
        start("scan", "--no-prefilter", "audit.jsonl", cwd=tmp_path),
    ]
    fast, slow = (r.wait() for r in runs)
    assert slow.rc == 0 and "not audit data" not in slow.err
    assert (fast.rc, fast.out, fast.err) == (slow.rc, slow.out, slow.err)


def test_input_that_is_not_audit_data_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello world\nthis is a text file\n")
    (tmp_path / "hello.json").write_text('{"hello": 1}\n{"hello": 2}\n')
    shutil.copy(SAMPLE, tmp_path / "audit.jsonl")
    result = eventd("scan", "notes.txt", "hello.json", "audit.jsonl", cwd=tmp_path)
    assert result.rc == 1
    assert "eventd: notes.txt: not audit data (line 1: invalid JSON: " in result.err
    assert (
        "eventd: hello.json: not audit data (line 1: data not recognized as a k8s audit event" in result.err
    )
    assert pairs(result) == SAMPLE_FIRST  # the other input is still scanned


def test_missing_file_is_an_error_with_the_os_message(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "audit.jsonl")
    result = eventd("scan", "missing.jsonl", "audit.jsonl", cwd=tmp_path)
    assert result.rc == 1
    assert result.err_lines == ["eventd: missing.jsonl: No such file or directory"]
    assert pairs(result) == SAMPLE_FIRST


# -------------------------------------------------------------------- rules

ALLOW_EVIL = """\
- list: eventd_allowed_registries
  items: [evil.example.com]
  override:
    items: append
"""


def test_rule_files_load_in_the_order_given(tmp_path: Path) -> None:
    (tmp_path / "allow.yaml").write_text(ALLOW_EVIL)
    runs = [
        start("scan", "-r", UNTRUSTED_PACK, SAMPLE, cwd=tmp_path),
        start("scan", "-r", UNTRUSTED_PACK, "-r", "allow.yaml", SAMPLE, cwd=tmp_path),
        start("scan", "-r", "allow.yaml", "-r", UNTRUSTED_PACK, SAMPLE, cwd=tmp_path),
    ]
    base, tuned, reversed_order = (r.wait() for r in runs)
    assert base.rc == tuned.rc == 0
    assert [identity(a) for a in base.alerts] == [MINER, DEBUG, API_2, FALCO_SHELL]
    assert [identity(a) for a in tuned.alerts] == [DEBUG, API_2, FALCO_SHELL]
    # The other way round the override names a list that does not exist yet.
    assert reversed_order.rc == 2
    assert reversed_order.out == ""
    assert "allow.yaml:1: list 'eventd_allowed_registries'" in reversed_order.err


def test_rules_directory_loads_its_files_sorted_by_name(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    shutil.copy(UNTRUSTED_PACK, rules / "10-base.yaml")
    (rules / "20-local.yaml").write_text(ALLOW_EVIL)
    (rules / "README.txt").write_text("not a rules file")
    result = eventd("scan", "-r", "rules.d", SAMPLE, cwd=tmp_path)
    assert result.rc == 0, result.err
    assert [identity(a) for a in result.alerts] == [DEBUG, API_2, FALCO_SHELL]


def test_broken_rules_file_exits_2_naming_file_line_and_rule(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "- rule: Broken\n  desc: d\n  condition: ka.verb =\n  output: o\n"
        "  priority: WARNING\n  source: k8s_audit\n"
    )
    result = eventd("scan", "-r", "bad.yaml", SAMPLE, cwd=tmp_path)
    assert result.rc == 2
    assert result.out == ""
    assert result.err.startswith("eventd: rules refused: bad.yaml:3: rule 'Broken': condition:")


# ------------------------------------------------------------------ options


def test_min_priority_drops_less_severe_alerts(tmp_path: Path) -> None:
    runs = [
        start("scan", "--min-priority", "warning", SAMPLE, cwd=tmp_path),
        start("scan", "--min-priority", "loud", SAMPLE, cwd=tmp_path),
    ]
    result, refused = (r.wait() for r in runs)
    assert result.rc == 0
    assert pairs(result) == [p for p in SAMPLE_FIRST if p[1] != NO_TAG]
    assert {a["priority"] for a in result.alerts} == {"Warning", "Error"}
    assert refused.rc == 2 and "unknown priority 'loud'" in refused.err


def test_rule_matching_all_reports_every_matching_rule(tmp_path: Path, sample_scan: Result) -> None:
    runs = [
        start("scan", "--rule-matching", "first", "--hostname", "scan-host", SAMPLE, cwd=tmp_path),
        start("scan", "--rule-matching", "all", SAMPLE, cwd=tmp_path),
    ]
    first, every = (r.wait() for r in runs)
    assert first.out == sample_scan.out  # first is the default
    assert [r for i, r in pairs(first) if i == DEBUG] == [UNTRUSTED]
    assert [r for i, r in pairs(every) if i == DEBUG] == [UNTRUSTED, IP_OR_PORT]
    assert len(every.alerts) > len(first.alerts)
    assert set(pairs(first)) < set(pairs(every))


def _stat(err: str, label: str) -> int:
    found = re.search(rf"{re.escape(label)}\s*[│|]\s*([\d,]+)", err)
    assert found, f"{label!r} not in summary:\n{err}"
    return int(found.group(1).replace(",", ""))


def test_stats_table_goes_to_stderr(tmp_path: Path) -> None:
    runs = [start("scan", "--stats", SAMPLE, cwd=tmp_path), start("scan", "--no-stats", SAMPLE, cwd=tmp_path)]
    result, quiet = (r.wait() for r in runs)
    assert result.rc == 0
    assert pairs(result) == SAMPLE_FIRST  # stdout holds alerts only
    assert "eventd scan" in result.err and "alerts per rule" in result.err
    assert _stat(result.err, "lines read") == 10
    assert _stat(result.err, "alerts") == 6
    assert _stat(result.err, UNTRUSTED) == 3
    assert quiet.err == ""


def test_prefilter_changes_nothing_but_the_work_done(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 3000, seed=20261129, pod_ratio=0.05, eventlist_ratio=0.05)
    with corpus.open("ab") as fh:
        fh.write(SAMPLE.read_bytes() + b"{not json\n" + orjson.dumps([1, 2]) + b"\n")
    common = ("scan", "--rule-matching", "all", "--stats", "corpus.jsonl")
    runs = [start(*common, cwd=tmp_path), start(*common, "--no-prefilter", cwd=tmp_path)]
    fast, slow = (r.wait() for r in runs)
    assert (fast.rc, slow.rc) == (0, 0), fast.err + slow.err
    assert fast.out == slow.out
    assert len(fast.alerts) > 20
    assert len(Counter(a["rule"] for a in fast.alerts)) >= 4
    # Both report the same bad lines; only the prefilter skips anything.
    rejects = [line for line in fast.err_lines if line.startswith("eventd: corpus.jsonl:")]
    assert len(rejects) == 2
    assert rejects == [line for line in slow.err_lines if line.startswith("eventd: corpus.jsonl:")]
    assert _stat(fast.err, "lines skipped by prefilter") > 2000
    assert _stat(slow.err, "lines skipped by prefilter") == 0


def test_closed_stdout_ends_the_scan_quietly(tmp_path: Path) -> None:
    write_lines(tmp_path / "audit.jsonl", [untrusted_pod(f"p{i}") for i in range(400)])
    proc = subprocess.Popen(
        [*MODULE, "scan", "audit.jsonl", "audit.jsonl"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # like `| head -1`: 400 alerts do not fit in the pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Broken pipe" not in err
