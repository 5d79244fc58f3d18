"""bench/airbench_reference: bad input stops with a clear message before any GPU work."""

import pytest

from bench import airbench_reference


def test_fewer_than_one_run_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        airbench_reference.main(["some-data", "--runs", "0"])
    assert exit_info.value.code == 2 and "--runs must be at least 1" in capsys.readouterr().err


def test_a_missing_data_copy_is_named_before_torch_is_needed(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        airbench_reference.main([str(tmp_path / "nowhere.tar.gz")])
    message = str(exit_info.value.code)
    assert message.startswith("error: data source") and "nowhere.tar.gz" in message and "--data PATH" in message
