"""Fast mode and cache location, read from environment variables."""

import pytest

from lora_course import by_mode, cache_dir, fast_mode
from lora_course.settings import display_path


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_fast_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("LORA_COURSE_FAST", value)
    assert fast_mode() is expected
    assert by_mode(full=300, fast=20) == (20 if expected else 300)


def test_fast_mode_rejects_unclear_values(monkeypatch):
    monkeypatch.setenv("LORA_COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="LORA_COURSE_FAST='maybe'"):
        fast_mode()


def test_cache_dir_can_be_overridden(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_COURSE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("LORA_COURSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lora_course"


def test_printed_paths_hide_this_machines_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(tmp_path / "cache" / "adapters" / "x") == "<course cache>/adapters/x"
    assert display_path(tmp_path / "home" / "notes") == "~/notes"
    assert display_path("/elsewhere/file") == "/elsewhere/file"
