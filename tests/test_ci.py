"""CI cannot lie: a missing browser, package or model skips a local run but fails any CI run, whatever truthy value
the CI system gives `CI`."""

from __future__ import annotations

import pytest

from conftest import unavailable


@pytest.mark.parametrize("value", ["true", "1", "yes", "True", "on"])
def test_missing_requirement_fails_on_ci(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=f"CI={value!r}"):
        unavailable("no Chromium on PATH")


@pytest.mark.parametrize("value", [None, "", "0", "false", "FALSE"])
def test_missing_requirement_skips_locally(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no Chromium on PATH"):
        unavailable("no Chromium on PATH")
