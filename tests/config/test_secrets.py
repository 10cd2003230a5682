"""gateway.config.secrets: secrets that never show, from env or a private file; resolve_password."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import pytest

from gateway.config.model import UpstreamConfig
from gateway.config.secrets import Secret, from_env, from_file, resolve_password
from gateway.errors import SecretError

VALUE = "Pa55-w0rd-that-must-not-leak"


def secret_file(tmp_path: Path, content: bytes | str, mode: int = 0o600) -> str:
    """A file holding `content` with permission bits `mode`."""
    path = tmp_path / "password"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    os.chmod(path, mode)
    return str(path)


# --- Secret -----------------------------------------------------------------------------------


def test_reveal_gives_value() -> None:
    """reveal() is the only way to the value."""
    assert Secret(VALUE).reveal() == VALUE


@pytest.mark.parametrize(
    "show",
    [
        repr,
        str,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: "%s" % s,  # noqa: UP031 - the old-style formatting is what is tested
        lambda s: "{}".format(s),  # noqa: UP032 - str.format is what is tested
        lambda s: format(s),
        lambda s: str([s]),
        lambda s: str({"password": s}),
        lambda s: str((s,)),
    ],
    ids=[
        "repr",
        "str",
        "f-string",
        "f-string-repr",
        "percent",
        "format-method",
        "format",
        "in-list",
        "in-dict",
        "in-tuple",
    ],
)
def test_secret_never_shown(show: object) -> None:
    """No ordinary way of turning a Secret into text shows its value."""
    text = show(Secret(VALUE))  # type: ignore[operator]
    assert VALUE not in text and "<secret>" in text


def test_secret_not_in_exception_text() -> None:
    """An exception built from a Secret, and its traceback, do not show the value."""
    try:
        raise ValueError("login failed for", Secret(VALUE))
    except ValueError as exc:
        rendered = "".join(traceback.format_exception(exc))
    assert VALUE not in rendered


def test_secret_not_in_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """A log line that interpolates a Secret does not show the value."""
    with caplog.at_level(logging.INFO):
        logging.getLogger("mailgate.test").info("password is %s (%r)", Secret(VALUE), Secret(VALUE))
    assert VALUE not in caplog.text


def test_secret_format_spec_does_not_reveal() -> None:
    """A format spec does not reveal the value either (it is refused)."""
    with pytest.raises(TypeError) as raised:
        f"{Secret(VALUE):>40}"
    assert VALUE not in str(raised.value)


def test_secret_has_no_attribute_dict() -> None:
    """vars() cannot dump a Secret's value (it uses __slots__)."""
    with pytest.raises(TypeError):
        vars(Secret(VALUE))


def test_secret_equality() -> None:
    """Secrets compare by value, and equal secrets hash alike."""
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b") and Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))


# --- from_env ---------------------------------------------------------------------------------


def test_from_env() -> None:
    """from_env reads the variable into a Secret."""
    assert from_env("PW", environ={"PW": VALUE}).reveal() == VALUE


@pytest.mark.parametrize("environ", [{}, {"PW": ""}], ids=["missing", "empty"])
def test_from_env_missing(environ: dict[str, str]) -> None:
    """A missing or empty variable is a SecretError naming the variable."""
    with pytest.raises(SecretError) as raised:
        from_env("PW", environ=environ)
    assert "PW" in str(raised.value)


def test_from_env_uses_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit environ, from_env reads the process environment."""
    monkeypatch.setenv("MAILGATE_UNIT_SECRET", VALUE)
    assert from_env("MAILGATE_UNIT_SECRET").reveal() == VALUE


# --- from_file --------------------------------------------------------------------------------


def test_from_file(tmp_path: Path) -> None:
    """from_file reads a mode-600 file, dropping the final line ending."""
    assert from_file(secret_file(tmp_path, VALUE + "\n")).reveal() == VALUE


def test_from_file_keeps_inner_spaces(tmp_path: Path) -> None:
    """Only trailing CR/LF are dropped; spaces are part of the secret."""
    assert from_file(secret_file(tmp_path, " a b \r\n")).reveal() == " a b "


def test_from_file_read_only_owner(tmp_path: Path) -> None:
    """A mode-400 file is accepted."""
    assert from_file(secret_file(tmp_path, VALUE, 0o400)).reveal() == VALUE


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644, 0o666])
def test_from_file_group_or_other_bits_refused(tmp_path: Path, mode: int) -> None:
    """A secret file with a group or other permission bit is refused, naming file and fix."""
    path = secret_file(tmp_path, VALUE, mode)
    with pytest.raises(SecretError) as raised:
        from_file(path)
    message = str(raised.value)
    assert path in message and f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert VALUE not in message


@pytest.mark.parametrize("content", ["", "\n", "\r\n\r\n"], ids=["empty", "newline", "blank-lines"])
def test_from_file_empty_refused(tmp_path: Path, content: str) -> None:
    """An empty secret file (or one with only line endings) is refused, naming the file."""
    path = secret_file(tmp_path, content)
    with pytest.raises(SecretError) as raised:
        from_file(path)
    assert path in str(raised.value) and "empty" in str(raised.value)


def test_from_file_missing(tmp_path: Path) -> None:
    """A missing file is a SecretError naming the file and the reason."""
    path = str(tmp_path / "absent")
    with pytest.raises(SecretError) as raised:
        from_file(path)
    assert path in str(raised.value) and "No such file" in str(raised.value)


def test_from_file_not_utf8_does_not_leak(tmp_path: Path) -> None:
    """A file that is not UTF-8 is refused without quoting its bytes."""
    path = secret_file(tmp_path, b"secret-\xff-bytes")
    with pytest.raises(SecretError) as raised:
        from_file(path)
    assert "secret-" not in str(raised.value).replace(path, "") and "\\xff" not in str(raised.value)


def test_from_file_directory(tmp_path: Path) -> None:
    """A directory given as secret file is refused with a SecretError, not an OSError."""
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    with pytest.raises(SecretError):
        from_file(str(directory))


# --- resolve_password -------------------------------------------------------------------------


def test_resolve_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_password reads password_env's variable into a Secret."""
    monkeypatch.setenv("MAILGATE_UNIT_PW", "pw-from-env")
    upstream = UpstreamConfig(name="p", host="h", username="u", password_env="MAILGATE_UNIT_PW")
    assert resolve_password(upstream) == Secret("pw-from-env")


def test_resolve_password_from_file(tmp_path: Path) -> None:
    """resolve_password reads password_file into a Secret."""
    path = tmp_path / "pw"
    path.write_text("pw-from-file\n")
    os.chmod(path, 0o600)
    upstream = UpstreamConfig(name="p", host="h", username="u", password_file=str(path))
    assert resolve_password(upstream) == Secret("pw-from-file")


def test_resolve_password_none_without_auth() -> None:
    """An upstream without a password reference has no password (no AUTH)."""
    assert resolve_password(UpstreamConfig(name="p", host="h")) is None


def test_resolve_password_error_names_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password that cannot be read is a SecretError naming the upstream and the variable."""
    monkeypatch.delenv("MAILGATE_UNIT_ABSENT", raising=False)
    upstream = UpstreamConfig(name="p", host="h", username="u", password_env="MAILGATE_UNIT_ABSENT")
    with pytest.raises(SecretError) as raised:
        resolve_password(upstream)
    assert str(raised.value).startswith("upstreams.p: ") and "MAILGATE_UNIT_ABSENT" in str(
        raised.value
    )
