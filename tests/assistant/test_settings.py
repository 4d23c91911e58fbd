"""Settings: file, environment and flags in that order of strength; bad values named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.settings import SettingsError, load_settings


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("ASSISTANT_CONFIG", str(path))
    for var in ("ASSISTANT_MODEL", "ASSISTANT_THREADS", "ASSISTANT_BACKEND", "ASSISTANT_TEMPERATURE"):
        monkeypatch.delenv(var, raising=False)
    return path


def test_defaults_without_a_file(config: Path) -> None:
    """With no settings file the bundled coder model on the auto backend is used."""
    s = load_settings()
    assert s.model == "qwen2.5-coder-0.5b" and s.backend == "auto" and s.threads is None


def test_file_then_environment_then_flags(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment overrides the file, and flags override both."""
    config.write_text('model = "smollm2-135m"\nthreads = 3\ntemperature = 0.5\n[models]\nmine = "/x/m.gguf"\n')
    s = load_settings()
    assert (s.model, s.threads, s.temperature) == ("smollm2-135m", 3, 0.5)
    assert s.models == {"mine": Path("/x/m.gguf")}
    monkeypatch.setenv("ASSISTANT_THREADS", "1")
    assert load_settings().threads == 1
    assert load_settings(threads=4, temperature=None).threads == 4
    assert load_settings(threads=4, temperature=None).temperature == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('threads = "many"', "setting 'threads' = 'many': input should be a valid integer"),
        ("threads = 0", "setting 'threads' = 0: input should be greater than or equal to 1"),
        ('backend = "gpu"', "setting 'backend' = 'gpu': input should be 'auto'"),
        ("thread = 2", "unknown setting 'thread'"),
        ("temperature = -1", "setting 'temperature' = -1"),
        ("models = 3", "setting 'models' = 3"),
    ],
)
def test_bad_values_name_key_value_and_type(config: Path, text: str, message: str) -> None:
    """A bad value in the file is reported with its key, the value and what was expected."""
    config.write_text(text + "\n")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert message in str(e.value)
    assert str(config) in str(e.value)


def test_bad_toml_is_reported_with_the_file(config: Path) -> None:
    """A settings file that is not TOML is reported with its path and the parser's position."""
    config.write_text("model = \n")
    with pytest.raises(SettingsError, match=r"is not valid TOML: .*line 1"):
        load_settings()


def test_bad_environment_value(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from the environment is reported like one from the file."""
    monkeypatch.setenv("ASSISTANT_THREADS", "lots")
    with pytest.raises(SettingsError, match="setting 'threads' = 'lots'"):
        load_settings()


def test_remote_section_key_and_url_flag(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[remote] comes from the file; the API key from the variable api_key_env names (never shown by
    `config show`); --remote-url replaces only the URL; a bad prompt mode is named."""
    config.write_text('backend = "remote"\n[remote]\nurl = "http://a:1"\nmodel = "coder-7b"\napi_key_env = "MY_KEY"\n')
    monkeypatch.setenv("MY_KEY", "sekrit")
    s = load_settings(remote={"url": "http://b:2/v1"})
    assert (s.backend, s.remote.url, s.remote.model, s.remote.prompt) == ("remote", "http://b:2/v1", "coder-7b", "auto")
    assert s.remote.key() == "sekrit" and "sekrit" not in s.model_dump_json()
    config.write_text('[remote]\napi_key = "in-file"\nprompt = "ids"\n')
    with pytest.raises(SettingsError, match="setting 'remote.prompt' = 'ids': input should be 'tokens', 'text' or 'auto'"):
        load_settings()
    config.write_text('[remote]\napi_key = "in-file"\n')
    assert load_settings().remote.key() == "in-file" and "in-file" not in load_settings().model_dump_json()
