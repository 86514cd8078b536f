"""What is kept out of a document as a possible secret: files by name or path, values by shape.

A context is text a model reads, prints, saves and may send elsewhere; credentials have no
business in it. Two rules, both turned off by ``include_secrets=True`` (``--include-secrets``):

1. Files whose name or path says they hold credentials are skipped in a source tree (each listed
   in ``doc.skipped`` with the reason): ``FILE_NAMES`` and ``FILE_PATHS`` below, plus any file
   holding a private key block.
2. Values with the shape of a well-known token (``TOKENS``: cloud access keys, source-host and
   package-registry tokens, chat-bot tokens, AI-service keys, passwords inside URLs) are
   replaced by ``[redacted <kind>]`` in every text file read, and the file is listed in
   ``doc.skipped`` with what was redacted. A token that fits no known shape is not found: this is
   a guard against the common accident, not a secret scanner.

Example::

    redact("git clone https://bob:hunter22@example.com/x.git")
    # ('git clone https://bob:[redacted password in a URL]@example.com/x.git',
    #  ['password in a URL'])
"""

from __future__ import annotations

import fnmatch
import re

from ringkit.errors import advice

# Matched against the file's name (case-sensitively, as shells do).
FILE_NAMES = (
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks",
    "*.keystore", "id_rsa", "id_rsa_*", "id_dsa", "id_ecdsa", "id_ecdsa_*", "id_ed25519",
    "id_ed25519_*", ".netrc", "_netrc", ".pgpass", ".htpasswd", ".npmrc", ".pypirc",
    ".git-credentials", ".vault-token", ".boto", ".s3cfg", "credentials", "credentials.*",
    "*.credentials", "*-credentials.json", "*_credentials.json", "secrets.*",
    "*service-account*.json", "*.tfvars", "*.tfvars.json", "*.tfstate", "*.tfstate.backup",
    "*.ovpn", "*.kdbx",
)
# Example files that document a format and hold no values.
FILE_NAME_EXCEPTIONS = (".env.example", ".env.sample", ".env.template", ".env.dist",
                        "*.pub")
# Matched against the end of the file's relative path: cloud and container CLI credentials.
FILE_PATHS = (
    ".kube/config", ".docker/config.json", ".aws/config", ".azure/*", ".config/gcloud/*",
    ".ssh/*", ".gnupg/*", ".config/gh/hosts.yml",
)

# kind -> pattern; the group named "secret" (or the whole match) is what is replaced.
TOKENS = {
    "AWS access key": r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i:aws_secret_access_key)\s*[=:]\s*[\"']?(?P<s1>[A-Za-z0-9/+]{40})\b",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "Azure storage key": r"(?i:AccountKey)=(?P<s2>[A-Za-z0-9+/]{86}==)",
    "GitHub token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    "GitLab token": r"\bglpat-[A-Za-z0-9_\-]{20,}\b",
    "Bitbucket token": r"\bATBB[A-Za-z0-9_\-]{28,}\b",
    "npm token": r"\bnpm_[A-Za-z0-9]{36}\b",
    "PyPI token": r"\bpypi-AgE[A-Za-z0-9_\-]{50,}",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{34,}\b",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    "Slack webhook": r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,}",
    "Discord bot token": r"\b[MNO][A-Za-z\d_\-]{23,27}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,40}\b",
    "Telegram bot token": r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b",
    "Stripe key": r"\b[rs]k_live_[0-9A-Za-z]{20,}\b",
    "OpenAI key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}",
    "Anthropic key": r"\bsk-ant-[A-Za-z0-9_\-]{32,}",
    "password in a URL": (r"\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@\"'<>]{1,64}:"
                          r"(?P<s3>[^\s/@\"'<>]{1,128})@"),
}
_TOKENS = re.compile("|".join(f"(?P<t{i}>{p})" for i, p in enumerate(TOKENS.values())))
_KINDS = list(TOKENS)
PRIVATE_KEY = re.compile(r"^-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", re.MULTILINE)


def matches(name: str, patterns) -> bool:
    """Whether ``name`` fits any of the shell ``patterns`` (case-sensitively)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def secret_file(rel: str) -> str | None:
    """Why the file at relative path ``rel`` (``/``-separated) may hold secrets, or None."""
    parts = rel.split("/")
    name = parts[-1]
    if matches(name, FILE_NAMES) and not matches(name, FILE_NAME_EXCEPTIONS):
        return "named like a credentials file"
    for pattern in FILE_PATHS:
        n = pattern.count("/") + 1
        if len(parts) >= n and fnmatch.fnmatchcase("/".join(parts[-n:]), pattern):
            return f"in {pattern.split('/')[0]}, a credentials folder"
    return None


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with each token of a known shape replaced by ``[redacted <kind>]``, and the
    kinds found (in order of first appearance)."""
    found: list[str] = []

    def replace(match: re.Match) -> str:
        kind = _KINDS[int(match.lastgroup[1:])]  # the outer group "t<i>" closes last
        if kind not in found:
            found.append(kind)
        whole, start = match.group(), match.start()
        inner = next((k for k in ("s1", "s2", "s3") if match.group(k) is not None), None)
        if inner is None:
            return f"[redacted {kind}]"
        a, b = match.start(inner) - start, match.end(inner) - start
        return f"{whole[:a]}[redacted {kind}]{whole[b:]}"

    return _TOKENS.sub(replace, text), found


def reads_it() -> str:
    """How to read what these rules keep out, in the caller's words (Python or CLI)."""
    return f"{advice('include_secrets=True', '--include-secrets')} reads it"


def redaction_note(kinds: list[str]) -> str:
    """The ``doc.skipped`` reason of a file read with ``kinds`` of values redacted."""
    return f"read with values redacted: {', '.join(kinds)} ({reads_it()})"
