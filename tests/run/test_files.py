"""The run directory's one way to write a file whole."""

import os

import pytest

from framework.run import files


def test_a_file_is_replaced_whole_and_no_staging_file_stays(tmp_path):
    file = tmp_path / files.SUMMARY_FILE
    files.write_json(file, {"steps": 1})
    files.write_atomically(file, '{"steps": 2}')
    assert file.read_text() == '{"steps": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [files.SUMMARY_FILE]


def test_a_write_that_fails_leaves_the_old_content(tmp_path, monkeypatch):
    file = tmp_path / files.METRICS_FILE
    files.write_atomically(file, "old\n")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(file, "new\n")
    assert file.read_text() == "old\n"


def test_the_stop_request_carries_its_reason_once(tmp_path):
    files.write_stop_request(tmp_path, "SIGTERM")
    assert files.clear_stop_request(tmp_path) == "SIGTERM"
    assert files.clear_stop_request(tmp_path) is None


def test_the_driver_reads_whether_the_workers_stopped_early_from_their_summary(tmp_path):
    stopped_early, summary = files.stopped_early, tmp_path / files.SUMMARY_FILE
    assert stopped_early(tmp_path) is None  # no summary: nothing to say
    summary.write_text('{"steps": 30, "final_loss": 0.5}')
    assert stopped_early(tmp_path) is None  # finished, even if a stop was asked too late
    summary.write_text('{"steps": 7, "stopped": "stop requested (signal)"}')
    assert stopped_early(tmp_path) == "stop requested (signal)"
