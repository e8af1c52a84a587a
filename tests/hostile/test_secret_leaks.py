"""Configuration secrets never appear in anything eventd writes (issue 11, point 2).

Every secret-bearing setting gets a unique marker value: the bearer token
files of both HTTP inputs, the webhook sink's token and HMAC key files and
its URL's ``user:password@`` and ``?apikey=``, the Alertmanager token file
and URL userinfo, the Slack webhook URL file, and the SASL password files of
the Kafka source and sink.  Then real ``eventd run`` processes are driven
through faults (receivers down or refusing, Kafka unreachable, secret files
rotated to values with CR/LF, malformed secret files and URLs at start) at
debug level, and everything they write is searched for every marker: the
logs on stderr, stdout, ``/metrics``, the bodies the receivers got and the
one-line errors of ``eventd run --check`` and ``eventd run``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.support.builders import falco_alert
from tests.support.daemon_process import EventdProcess, free_port
from tests.support.http_receiver import Answer, Receiver, serve

pytestmark = pytest.mark.timeout(180)

#: Secret file contents a rotation or an operator may leave behind: a line
#: break inside, CR/LF, a control character.  ``{}`` is where markers go.
BAD_CONTENTS = ("{}\r\n{}\n", "{}\n{}", "{}\x1b[2J{}\n")


class Secrets:
    """Unique marker values planted in settings, and the search for them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.markers: dict[str, str] = {}

    def marker(self, name: str) -> str:
        """A new value no other text can contain by chance (URL-safe)."""
        value = f"{name.replace('_', '')}{uuid.uuid4().hex}"
        self.markers[value] = name
        return value

    def file(self, name: str, content: str | None = None) -> str:
        """A secret file holding a marker (``content`` with ``{}`` for markers)."""
        path = self.tmp / f"{name}.secret"
        text = f"{self.marker(name)}\n" if content is None else content.format(*self._two(name))
        path.write_text(text)
        return str(path)

    def rotate(self, path: str, name: str, content: str) -> None:
        """Rewrite a secret file with a malformed value made of new markers."""
        Path(path).write_text(content.format(*self._two(f"{name}rotated")))

    def _two(self, name: str) -> tuple[str, str]:
        return self.marker(name + "a"), self.marker(name + "b")

    def leaks(self, text: str) -> list[str]:
        """The settings whose markers appear in ``text``."""
        return sorted({name for value, name in self.markers.items() if value in text})


def run_eventd(tmp: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """``eventd run --config`` (plus ``args``) to its end; a daemon that starts
    although it should have refused is stopped after a while."""
    path = tmp / f"eventd-{uuid.uuid4().hex}.yaml"
    config.setdefault("server", {"listen": f"127.0.0.1:{free_port()}"})
    config.setdefault("log_level", "debug")
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "eventd", "run", "--config", str(path), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        errs = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
        return subprocess.CompletedProcess(cmd, -1, out, errs)


def assert_refused(secrets: Secrets, result: subprocess.CompletedProcess[str], key: str) -> None:
    """Refused with status 2 and one line naming ``key``, quoting no secret."""
    everything = result.stdout + result.stderr
    assert not secrets.leaks(everything), f"secrets {secrets.leaks(everything)} in: {everything}"
    assert result.returncode == 2, f"not refused ({result.returncode}): {result.stderr[-2000:]}"
    # Log records (JSON) may come first when the daemon got that far.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, f"expected one line: {result.stderr}"
    assert lines[0].startswith("eventd: config refused: " + key), lines[0]


# ------------------------------------------------------------------ at start


def _sources_with_tokens(secrets: Secrets) -> dict[str, Any]:
    return {
        "k8s_audit_webhook": {
            "listen": f"127.0.0.1:{free_port()}",
            "token_file": secrets.file("audit_webhook_token"),
        },
        "falco_http": {"listen": f"127.0.0.1:{free_port()}", "token_file": secrets.file("falco_http_token")},
    }


def _kafka_sasl(secrets: Secrets, name: str, content: str | None = None) -> dict[str, Any]:
    return {"mechanism": "SCRAM-SHA-512", "username": "eventd", "password_file": secrets.file(name, content)}


#: key of the malformed file -> the config that plants it (``content`` in it).
FILE_SETTINGS: dict[str, Callable[[Secrets, str, int], dict[str, Any]]] = {
    "sources.k8s_audit_webhook.token_file": lambda s, c, p: {
        "sources": {"k8s_audit_webhook": {"listen": f"127.0.0.1:{p}", "token_file": s.file("wt", c)}}
    },
    "sources.falco_http.token_file": lambda s, c, p: {
        "sources": {"falco_http": {"listen": f"127.0.0.1:{p}", "token_file": s.file("ft", c)}}
    },
    "sinks.webhook.token_file": lambda s, c, p: {
        "sinks": {"webhook": {"url": f"http://127.0.0.1:{p}/", "token_file": s.file("st", c)}}
    },
    "sinks.webhook.hmac_secret_file": lambda s, c, p: {
        "sinks": {"webhook": {"url": f"http://127.0.0.1:{p}/", "hmac_secret_file": s.file("hm", c)}}
    },
    "sinks.alertmanager.token_file": lambda s, c, p: {
        "sinks": {"alertmanager": {"url": f"http://127.0.0.1:{p}", "token_file": s.file("am", c)}}
    },
    "sinks.slack.webhook_url_file": lambda s, c, p: {
        "sinks": {"slack": {"webhook_url_file": s.file("sl", c.replace("{}", f"http://127.0.0.1:{p}/{{}}"))}}
    },
    "sources.kafka.sasl.password_file": lambda s, c, p: {
        "sources": {
            "kafka": {
                "bootstrap_servers": [f"127.0.0.1:{p}"],
                "topics": ["audit"],
                "sasl": _kafka_sasl(s, "ks", c),
            }
        }
    },
    "sinks.kafka.sasl.password_file": lambda s, c, p: {
        "sinks": {
            "kafka": {
                "bootstrap_servers": [f"127.0.0.1:{p}"],
                "spool_dir": str(s.tmp / "spool"),
                "sasl": _kafka_sasl(s, "kk", c),
            }
        }
    },
}


@pytest.mark.parametrize("content", BAD_CONTENTS, ids=["crlf", "lf", "escape"])
@pytest.mark.parametrize("key", list(FILE_SETTINGS))
def test_malformed_secret_file_is_refused_at_start_naming_the_key(
    tmp_path: Path, key: str, content: str
) -> None:
    secrets = Secrets(tmp_path)
    config = FILE_SETTINGS[key](secrets, content, free_port())
    config.setdefault("sources", {"falco_http": {"listen": f"127.0.0.1:{free_port()}"}})
    config.setdefault("sinks", {"stdout": {}})
    assert_refused(secrets, run_eventd(tmp_path, config, "--check"), key)
    assert_refused(secrets, run_eventd(tmp_path, config), key)


def _url_cases(secrets: Secrets, port: int) -> list[tuple[str, dict[str, Any]]]:
    """(key named in the refusal, sinks section) for URLs that cannot be used."""
    user, password, query = secrets.marker("urluser"), secrets.marker("urlpass"), secrets.marker("urlquery")
    creds, key = f"{user}:{password}@", f"?apikey={query}"
    token = secrets.file("token")
    return [
        ("sinks.webhook.url", {"webhook": {"url": f"http://{creds}[bad/hook{key}"}}),
        ("sinks.webhook.url", {"webhook": {"url": f"ftp://{creds}127.0.0.1:{port}/{key}"}}),
        ("sinks.webhook.url", {"webhook": {"url": f"http://{creds}127.0.0.1:99999/{key}"}}),
        ("sinks.webhook.url", {"webhook": {"url": f"http://{creds}127.0.0.1:{port}/a b{key}"}}),
        ("sinks.webhook.url", {"webhook": {"url": [f"http://{creds}127.0.0.1:{port}/{key}"]}}),
        # The HTTP client cannot send URL credentials and a bearer token together.
        (
            "sinks.webhook.url",
            {"webhook": {"url": f"http://{creds}127.0.0.1:{port}/{key}", "token_file": token}},
        ),
        ("sinks.alertmanager.url", {"alertmanager": {"url": f"http://{creds}[::1/{key}"}}),
        (
            "sinks.alertmanager.url",
            {"alertmanager": {"url": f"http://{creds}127.0.0.1:{port}", "token_file": token}},
        ),
        ("sinks.alertmanager.url", {"alertmanager": {"url": {"u": f"http://{creds}127.0.0.1:{port}/{key}"}}}),
        ("sinks.slack.webhook_url_file", {"slack": {"webhook_url_file": secrets.file("slack", "{}:/{}\n")}}),
        (
            "sinks.slack.webhook_url_file",
            {"slack": {"webhook_url_file": secrets.file("slackftp", "ftp://127.0.0.1/{}?t={}\n")}},
        ),
    ]


def test_unusable_urls_are_refused_without_quoting_credentials(tmp_path: Path) -> None:
    secrets = Secrets(tmp_path)
    for key, sinks in _url_cases(secrets, free_port()):
        config = {"sources": {"falco_http": {"listen": f"127.0.0.1:{free_port()}"}}, "sinks": sinks}
        assert_refused(secrets, run_eventd(tmp_path, config, "--check"), key)
        assert_refused(secrets, run_eventd(tmp_path, config), key)


# -------------------------------------------------------------- while running


class Scene:
    """A daemon with every secret planted, its receivers, and the files to rotate."""

    def __init__(
        self, tmp: Path, secrets: Secrets, slack: Receiver, alertmanager: Receiver, webhook: str
    ) -> None:
        self.secrets = secrets
        self.sources = _sources_with_tokens(secrets)
        self.falco_token = Path(self.sources["falco_http"]["token_file"]).read_text().strip()
        self.am_token_file = secrets.file("alertmanager_token")
        self.am_token = Path(self.am_token_file).read_text().strip()
        slack_url = (
            f"{slack.url}/services/{secrets.marker('slack_path')}?token={secrets.marker('slack_query')}"
        )
        self.slack_url_file = tmp / "slack-url"
        self.slack_url_file.write_text(slack_url + "\n")
        secrets.markers[slack_url] = "slack_url"
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: Kafka is unreachable
        http = {"max_retries": 1, "retry_backoff_seconds": 0.05, "timeout_seconds": 5, "dedup": None}
        self.webhook_files = {
            "sinks.webhook.hmac_secret_file": secrets.file("webhook_hmac"),
        }
        self.config: dict[str, Any] = {
            "log_level": "debug",
            "sources": {
                **self.sources,
                "kafka": {
                    "bootstrap_servers": [dead],
                    "topics": ["audit"],
                    "sasl": _kafka_sasl(secrets, "ksrc"),
                },
            },
            "sinks": {
                "stdout": {},
                "kafka": {
                    "bootstrap_servers": [dead],
                    "spool_dir": str(tmp / "spool"),
                    "request_timeout_seconds": 2,
                    "sasl": _kafka_sasl(secrets, "ksink"),
                },
                "webhook": {
                    **http,
                    "url": webhook,
                    "hmac_secret_file": self.webhook_files["sinks.webhook.hmac_secret_file"],
                },
                "alertmanager": {**http, "url": alertmanager.url, "token_file": self.am_token_file},
                "slack": {**http, "webhook_url_file": str(self.slack_url_file)},
            },
        }

    @property
    def falco(self) -> str:
        return f"http://{self.sources['falco_http']['listen']}/"

    def rotated_files(self) -> dict[str, str]:
        """key -> secret file path, for every file the requests below re-read."""
        return {
            "sources.falco_http.token_file": self.sources["falco_http"]["token_file"],
            "sources.k8s_audit_webhook.token_file": self.sources["k8s_audit_webhook"]["token_file"],
            "sinks.alertmanager.token_file": self.am_token_file,
            "sinks.slack.webhook_url_file": str(self.slack_url_file),
            **self.webhook_files,
            # Read again whenever a Kafka client reconnects (Kafka is unreachable).
            "sources.kafka.sasl.password_file": self.config["sources"]["kafka"]["sasl"]["password_file"],
            "sinks.kafka.sasl.password_file": self.config["sinks"]["kafka"]["sasl"]["password_file"],
        }


def post_alert(url: str, token: str, rule: str) -> int:
    """POST one Falco alert; 0 while nothing listens yet (the ops server
    answers before every source has bound its port)."""
    body = orjson.dumps(dict(falco_alert(), rule=rule, priority="Critical"))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return 0
        raise


async def wait_until(what: str, check: Callable[[], bool], proc: EventdProcess, timeout: float = 30) -> None:
    """Poll ``check`` without blocking the receivers' event loop."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if proc.proc.poll() is not None:
            raise AssertionError(f"eventd exited ({proc.proc.returncode}): {proc.stderr()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {proc.stderr()[-3000:]}")
        await asyncio.sleep(0.05)


def _metrics_or_empty(proc: EventdProcess) -> str:
    try:
        return proc.metrics()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


@pytest.mark.asyncio
async def test_running_daemon_under_faults_writes_no_secret(tmp_path: Path) -> None:
    """Receivers refusing (Slack 403, Alertmanager 500), the webhook receiver
    down, Kafka unreachable, then every re-read secret file rotated to a value
    with CR/LF: the old values stay in force, a warning names each key, a
    counter counts it, and no marker shows anywhere."""
    secrets = Secrets(tmp_path)
    user, password, query = (
        secrets.marker("hookuser"),
        secrets.marker("hookpass"),
        secrets.marker("hookquery"),
    )
    webhook = f"http://{user}:{password}@127.0.0.1:{free_port()}/hook?apikey={query}"
    async with serve(Answer(status=403)) as slack, serve(Answer(status=500)) as alertmanager:
        scene = Scene(tmp_path, secrets, slack, alertmanager, webhook)
        proc = EventdProcess(tmp_path, scene.config)
        try:
            await wait_until("the ops server", lambda: bool(_metrics_or_empty(proc)), proc)
            await wait_until(
                "falco_http", lambda: post_alert(scene.falco, scene.falco_token, "one") == 200, proc
            )
            await wait_until(
                "deliveries to fail",
                lambda: (
                    len(slack.requests) >= 1
                    and len(alertmanager.requests) >= 2
                    and proc.metric("eventd_sink_failures_total", sink="webhook") >= 2
                ),
                proc,
            )
            before = len(alertmanager.requests)
            for key, path in scene.rotated_files().items():
                secrets.rotate(path, key.replace(".", ""), BAD_CONTENTS[0])
            # The old token still opens the input; the old one goes to Alertmanager.
            assert await asyncio.to_thread(post_alert, scene.falco, scene.falco_token, "two") == 200
            await wait_until("a delivery after rotation", lambda: len(alertmanager.requests) > before, proc)
            assert alertmanager.requests[-1].headers["Authorization"] == f"Bearer {scene.am_token}"
            # Every file but the audit webhook's token (nobody posts there) is re-read.
            rejected = [k for k in scene.rotated_files() if k != "sources.k8s_audit_webhook.token_file"]
            await wait_until(
                "rotations to be refused",
                lambda: all(
                    proc.metric("eventd_secret_file_rejected_total", key=key) >= 1 for key in rejected
                ),
                proc,
            )
            metrics = await asyncio.to_thread(proc.metrics)
        finally:
            code = await asyncio.to_thread(proc.stop)
        received = b"".join(r.body for r in slack.requests + alertmanager.requests).decode()
    stdout = "\n".join(orjson.dumps(a).decode() for a in proc.alerts)
    stderr = proc.stderr()
    for where, text in (("stderr", stderr), ("stdout", stdout), ("metrics", metrics), ("bodies", received)):
        assert not secrets.leaks(text), f"{secrets.leaks(text)} leaked to {where}"
    assert code == 0, stderr[-3000:]
    assert any(log.get("level") == "debug" for log in proc.logs()), "not run at debug level"
    warned = {log.get("key") for log in proc.logs() if log.get("event") == "secret_file_rejected"}
    assert set(rejected) <= warned, f"no warning for {set(rejected) - warned}"


# ------------------------------------------------------------ the helpers
# (imported in the tests: the rest of this file also runs against the code
# from before these helpers existed, to show it fails there.)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:SECRET@am.example:9093/api?apikey=SECRET", "https://***@am.example:9093/api?***"),
        ("http://hooks.example/x#SECRET", "http://hooks.example/x?***"),
        # A raw '/', '?', '#' or '@' in a password: which part is the host cannot be told.
        ("http://u:SE/CRET@host/x", "http://***"),
        ("http://u:SE?CRET@host/x", "http://***"),
        ("http://u:12#SECRET@host", "http://***"),
        ("https://host/x?email=SECRET@example.com", "https://***"),
        ("u:SECRET@host", "***@host"),
        ("http//u:SECRET@host", "***"),
    ],
)
def test_redact_url_never_shows_a_credential(url: str, shown: str) -> None:
    from eventd.redact_url import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("text", "value"),
    [("tok\n", "tok"), ("tok\r\n", "tok"), (" tok \n", "tok"), ("t o k", "t o k")],
)
def test_one_trailing_newline_is_dropped(text: str, value: str) -> None:
    from eventd.secretfile import clean_secret

    assert clean_secret(text) == value


@pytest.mark.parametrize("text", ["tok\n\n", "t\rok", "\ttok", "to\x00k", "to\x85k", "to\u2028k", "\n", ""])
def test_line_breaks_and_control_characters_are_refused(text: str) -> None:
    from eventd.secretfile import clean_secret

    with pytest.raises(ValueError) as err:
        clean_secret(text)
    assert "tok" not in str(err.value)


# ------------------------------------------------------------ the log pipeline

#: Run in a fresh interpreter (logging is configured once per process): a
#: secret from a secret file and URL credentials reach exception messages,
#: frame locals and a library's log record, as a misbehaving library would.
LOGGING_SCRIPT = """
import logging, sys
from pathlib import Path
import structlog
from eventd.logs import configure_logging
from eventd.secretfile import SecretFile

configure_logging("debug")
token = SecretFile(Path(sys.argv[1]), "sinks.webhook.token_file").value()
url = sys.argv[2]
try:
    from eventd.sinks.webhook import WebhookSink  # registers the URL's credentials
    from eventd.config import WebhookSinkConfig
    from eventd.metrics import Metrics
    WebhookSink(WebhookSinkConfig(url=url), Metrics())
except Exception:
    pass

def deliver(headers, target):
    raise ValueError(f"cannot send {headers!r} to {target}")

try:
    deliver({"Authorization": "Bearer " + token}, url)
except ValueError:
    structlog.get_logger("test").exception("delivery_failed")
logging.getLogger("aiokafka").error("connect to %s failed with %s", url, token)
structlog.get_logger("test").error("stray", error=ValueError(url), headers={"Authorization": token})
"""


def test_log_records_carry_no_locals_no_secret_and_no_url_credentials(tmp_path: Path) -> None:
    secrets = Secrets(tmp_path)
    token_file = secrets.file("token")
    user, password, query = secrets.marker("user"), secrets.marker("password"), secrets.marker("query")
    host = f"127.0.0.1:{free_port()}"
    url = f"http://{user}:{password}@{host}/hook?apikey={query}"
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, token_file, url], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    records = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert [r["event"] for r in records][-3:] == [
        "delivery_failed",
        f"connect to http://***@{host}/***?*** failed with ***",
        "stray",
    ]
    assert not secrets.leaks(result.stderr + result.stdout), result.stderr
    frames = [f for r in records for e in r.get("exception", ()) for f in e["frames"]]
    assert frames and not any("locals" in f for f in frames)
