"""No secret is committed: no password, key or token file, and no credential written into a tracked file."""

import re
import subprocess

from tests.conftest import REPO

SECRET_FILES = re.compile(r"(^|/)(\.env(\..*)?|.*passwords?.*\.(json|generated|txt)|.*\.(pem|key|p12|pfx)|id_(rsa|ed25519))$")
# Split so that this file does not match itself.
PATTERNS = {
    "private key": re.compile("-----BEGIN [A-Z ]*" + "PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA" + r"[0-9A-Z]{16}\b"),
    "credential in a URI": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?!\$|\{)[^/\s:@'\"]{3,}@"),
    "assigned secret": re.compile(r"(?i)\b(password|passwd|secret|api_key|token)\b\s*[:=]\s*['\"][^'\"\s$]{6,}['\"]"),
}


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def test_no_secret_file_is_tracked():
    assert [f for f in tracked_files() if SECRET_FILES.search(f)] == []


def test_no_tracked_file_holds_a_credential():
    found = []
    for name in tracked_files():
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {kind}" for kind, pattern in PATTERNS.items() if pattern.search(text)]
    assert found == []


def test_the_patterns_catch_what_they_are_for():
    # Put together here so that this file itself holds no match.
    assert PATTERNS["credential in a URI"].search("postgresql://recsys:" + "hunter22@db:5432/recsys")
    assert not PATTERNS["credential in a URI"].search("postgresql://recsys:${PGPASSWORD}@db/recsys")
    assert PATTERNS["assigned secret"].search("pass" + 'word = "correct-horse"')
    assert SECRET_FILES.search("var/airflow/simple_auth_manager_passwords.json.generated")
