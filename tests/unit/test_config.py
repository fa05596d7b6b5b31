"""Configuration (distwal._config): argument > environment > default, one-line errors, export."""

from __future__ import annotations

import os
import re

import pytest

from distwal import ConfigError, _config
from distwal._config import Config

# Every test passes its environment as a dict: os.environ is never read or written here,
# except by the tests of the os.environ defaults, which use monkeypatch.


def load(env: dict[str, str] | None = None, **kwargs) -> Config:
    return Config.load(env={} if env is None else env, **kwargs)


# -- precedence ----------------------------------------------------------------------------


def test_defaults_with_an_empty_environment() -> None:
    config = load()
    assert config.dir == os.path.abspath(_config.DEFAULT_DIR)
    assert config.sink == f"sqlite:///{os.path.join(config.dir, 'collected.db')}"
    assert config.durability == _config.DEFAULT_DURABILITY
    assert config.on_full == _config.DEFAULT_ON_FULL
    assert config.lease_s == _config.DEFAULT_LEASE_S
    assert config.exit_timeout == _config.DEFAULT_EXIT_TIMEOUT
    assert config.max_pending_bytes is None
    assert config.disable_sender is False and config.shared_group is False


def test_dir_argument_beats_environment_beats_default(tmp_path) -> None:
    env = {"DISTWAL_DIR": str(tmp_path / "from-env")}
    assert load(env, dir=tmp_path / "from-arg").dir == str(tmp_path / "from-arg")
    assert load(env).dir == str(tmp_path / "from-env")
    assert load({}).dir == os.path.abspath(".distwal")


def test_relative_dir_is_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(dir="rel").dir == str(tmp_path / "rel")
    assert load({"DISTWAL_DIR": "rel2"}).dir == str(tmp_path / "rel2")


def test_sink_argument_beats_environment_beats_default(tmp_path) -> None:
    env = {"DISTWAL_SINK": "https://env.example/ingest", "DISTWAL_DIR": str(tmp_path)}
    assert load(env, sink="jsonl:///arg.jsonl").sink == "jsonl:///arg.jsonl"
    assert load(env).sink == "https://env.example/ingest"
    assert load({"DISTWAL_DIR": str(tmp_path)}).sink == f"sqlite:///{tmp_path}/collected.db"


def test_durability_argument_beats_environment_beats_default() -> None:
    env = {"DISTWAL_DURABILITY": "none"}
    assert load(env, durability="sync").durability == "sync"
    assert load(env).durability == "none"
    assert load().durability == "interval"


@pytest.mark.parametrize(
    "option, var, arg, raw, parsed",
    [
        ("on_full", "DISTWAL_ON_FULL", "drop", "raise", "raise"),
        ("lease_s", "DISTWAL_LEASE_S", 3.0, "7.5", 7.5),
        ("exit_timeout", "DISTWAL_EXIT_TIMEOUT", 1.0, "2", 2.0),
        ("max_pending_bytes", "DISTWAL_MAX_PENDING_BYTES", 10, "4096", 4096),
        ("run_id", "DISTWAL_RUN_ID", "from-arg", "from-env", "from-env"),
        ("shared_group", "DISTWAL_SHARED_GROUP", False, "1", True),
        ("disable_sender", "DISTWAL_DISABLE_SENDER", False, "yes", True),
    ],
)
def test_option_argument_beats_environment(option: str, var: str, arg, raw: str, parsed) -> None:
    assert getattr(load({var: raw}), option) == parsed
    assert getattr(load({var: raw}, **{option: arg}), option) == arg


@pytest.mark.parametrize("raw", ["1", "true", "yes"])
def test_boolean_variables_accept_their_true_spellings(raw: str) -> None:
    config = load({"DISTWAL_SHARED_GROUP": raw, "DISTWAL_DISABLE_SENDER": raw})
    assert config.shared_group is True and config.disable_sender is True


@pytest.mark.parametrize("raw", ["", "0", "false", "no"])
def test_boolean_variables_accept_their_false_spellings(raw: str) -> None:
    config = load({"DISTWAL_SHARED_GROUP": raw, "DISTWAL_DISABLE_SENDER": raw})
    assert config.shared_group is False and config.disable_sender is False


def test_load_reads_os_environ_by_default(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DISTWAL_DIR", str(tmp_path / "osenv"))
    monkeypatch.setenv("DISTWAL_DURABILITY", "sync")
    config = Config.load()
    assert (config.dir, config.durability) == (str(tmp_path / "osenv"), "sync")


# -- bad values --------------------------------------------------------------------------------


def one_line_error(env: dict[str, str], **kwargs) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load(env, **kwargs)
    message = str(excinfo.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


@pytest.mark.parametrize(
    "var, raw",
    [
        ("DISTWAL_DURABILITY", "fast"),
        ("DISTWAL_ON_FULL", "explode"),
        ("DISTWAL_LEASE_S", "soon"),
        ("DISTWAL_EXIT_TIMEOUT", "5s"),
        ("DISTWAL_MAX_PENDING_BYTES", "1.5"),
        ("DISTWAL_MAX_PENDING_BYTES", "-5"),
        ("DISTWAL_MAX_PENDING_BYTES", "0"),
    ],
)
def test_bad_variable_raises_one_line_naming_it(var: str, raw: str) -> None:
    message = one_line_error({var: raw})
    assert var in message


@pytest.mark.parametrize(
    "var, raw",
    [
        ("DISTWAL_LEASE_S", "-1"),
        ("DISTWAL_LEASE_S", "nan"),
        ("DISTWAL_EXIT_TIMEOUT", "0"),
        ("DISTWAL_SINK", "ftp://host/x"),
    ],
)
def test_out_of_range_variable_raises_one_line_naming_it(var: str, raw: str) -> None:
    message = one_line_error({var: raw})
    assert var in message


@pytest.mark.parametrize("var", ["DISTWAL_SHARED_GROUP", "DISTWAL_DISABLE_SENDER"])
def test_unrecognised_boolean_variable_raises(var: str) -> None:
    message = one_line_error({var: "maybe"})
    assert var in message


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"durability": "fast"}, "durability"),
        ({"sink": "ftp://host/x"}, "ftp://host/x"),
        ({"interval": 0}, "interval"),
        ({"heartbeat_interval": -1.0}, "heartbeat_interval"),
        ({"segment_bytes": 0}, "segment_bytes"),
        ({"max_buffer_bytes": 1.5}, "max_buffer_bytes"),
        ({"max_record_bytes": 2048, "max_buffer_bytes": 1024}, "max_record_bytes"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_argument_raises_one_line_naming_it(kwargs: dict, needle: str) -> None:
    assert needle in one_line_error({}, **kwargs)


def test_max_record_bytes_follows_a_small_buffer() -> None:
    assert load(max_buffer_bytes=1000).max_record_bytes == 1000
    assert load(max_buffer_bytes=1 << 30).max_record_bytes == _config.DEFAULT_MAX_RECORD_BYTES
    assert load(max_buffer_bytes=1000, max_record_bytes=10).max_record_bytes == 10


def test_sink_error_redacts_credentials() -> None:
    message = one_line_error({}, sink="ftp://user:secret@host/x")
    assert "secret" not in message and "host/x" in message


@pytest.mark.parametrize("sink", ["http://h/x", "https://h/x", "sqlite:///a.db", "jsonl:///a.jsonl", "HTTPS://h"])
def test_known_sink_schemes_are_accepted(sink: str) -> None:
    assert load(sink=sink).sink == sink


# -- multi-node ---------------------------------------------------------------------------------


@pytest.mark.parametrize("var", ["GROUP_WORLD_SIZE", "SLURM_NNODES"])
def test_multi_node_without_dir_raises(var: str) -> None:
    message = one_line_error({var: "2"})
    assert "DISTWAL_DIR" in message


@pytest.mark.parametrize("var", ["GROUP_WORLD_SIZE", "SLURM_NNODES"])
def test_multi_node_with_dir_is_fine(var: str, tmp_path) -> None:
    assert load({var: "2", "DISTWAL_DIR": str(tmp_path)}).dir == str(tmp_path)
    assert load({var: "2"}, dir=tmp_path).dir == str(tmp_path)


@pytest.mark.parametrize("env", [{"GROUP_WORLD_SIZE": "1"}, {"SLURM_NNODES": "1"}, {"SLURM_NNODES": ""}])
def test_single_node_uses_the_default_dir(env: dict[str, str]) -> None:
    assert load(env).dir == os.path.abspath(".distwal")


# -- run id ---------------------------------------------------------------------------------------


def test_run_id_from_torchelastic() -> None:
    assert load({"TORCHELASTIC_RUN_ID": "tea-1", "SLURM_JOB_ID": "99"}).run_id == "tea-1"


def test_run_id_torchelastic_none_falls_back_to_slurm() -> None:
    assert load({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "99"}).run_id == "99"


def test_run_id_torchelastic_none_without_slurm_is_generated() -> None:
    run_id = load({"TORCHELASTIC_RUN_ID": "none"}).run_id
    assert run_id != "none" and re.fullmatch(r"[0-9a-f]{16}", run_id)


def test_run_id_from_slurm() -> None:
    assert load({"SLURM_JOB_ID": "12345"}).run_id == "12345"


def test_run_id_distwal_variable_beats_launchers() -> None:
    assert load({"DISTWAL_RUN_ID": "mine", "TORCHELASTIC_RUN_ID": "tea", "SLURM_JOB_ID": "9"}).run_id == "mine"


def test_run_id_generated_differs_per_load() -> None:
    first, second = load().run_id, load().run_id
    assert re.fullmatch(r"[0-9a-f]{16}", first) and re.fullmatch(r"[0-9a-f]{16}", second)
    assert first != second


# -- export -------------------------------------------------------------------------------------


def test_export_into_a_dict(tmp_path) -> None:
    config = load({"SLURM_JOB_ID": "77"}, dir=tmp_path, sink="jsonl:///out.jsonl")
    env: dict[str, str] = {"OTHER": "kept"}
    config.export(env)
    assert env == {
        "OTHER": "kept",
        "DISTWAL_DIR": str(tmp_path),
        "DISTWAL_SINK": "jsonl:///out.jsonl",
        "DISTWAL_RUN_ID": "77",
    }


def test_export_then_load_gives_the_same_job(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    parent = load(dir="relative")
    child_env: dict[str, str] = {}
    parent.export(child_env)
    monkeypatch.chdir("/")  # the child starts elsewhere: the exported dir is absolute
    child = load(child_env)
    assert (child.dir, child.sink, child.run_id) == (parent.dir, parent.sink, parent.run_id)


def test_export_defaults_to_os_environ(tmp_path, monkeypatch) -> None:
    for name in ("DISTWAL_DIR", "DISTWAL_SINK", "DISTWAL_RUN_ID"):
        monkeypatch.setenv(name, "stale")  # monkeypatch restores these afterwards
    config = load(dir=tmp_path, run_id="r-1")
    config.export()
    assert os.environ["DISTWAL_DIR"] == str(tmp_path)
    assert os.environ["DISTWAL_SINK"] == config.sink
    assert os.environ["DISTWAL_RUN_ID"] == "r-1"
