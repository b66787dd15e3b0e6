import pytest

from framework.config.schema import DataConfig
from framework.data.fit import fit_to_length
from framework.data.formats import Conversation, ErrorPolicy, RecordError
from framework.data.preference import RenderedPair
from framework.data.render import RenderedExample
from framework.data.sources import LoadedRecord


def _example(prompt: int, reply: int) -> RenderedExample:
    """`prompt` untrained tokens, then `reply` trained ones."""
    return RenderedExample(list(range(prompt + reply)), [0.0] * prompt + [1.0] * reply)


def _fit(rendered: list, on_error: str = "raise", **data):
    records = [
        LoadedRecord("s", f"s.jsonl:{i + 1}", Conversation([])) for i in range(len(rendered))
    ]
    policy = ErrorPolicy(on_error)
    return fit_to_length(records, rendered, DataConfig(max_seq_len=8, **data), policy), policy


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_example_truncated_to_nothing_trainable_is_counted_not_fatal(on_error):
    # Line 2's reply starts past the 8-token row; line 3 is a pair whose prompt fills half.
    pair = RenderedPair(_example(6, 2), _example(6, 3))
    fitted, policy = _fit([_example(2, 3), _example(9, 2), pair, _example(3, 9)], on_error)
    assert policy.skipped == {"s": {"no_target": 2}}
    assert fitted.truncated["s"] == 3  # lines 2, 3 and 4: 4 keeps 5 trained tokens
    assert [len(ids) for ids, _ in fitted.examples] == [5, 8]
    assert fitted.sources == ["s", "s"]
    assert policy.first["no_target"] == "s.jsonl:2: no trained token within data.max_seq_len=8"


def test_an_example_with_no_trained_token_before_any_cut_follows_on_error():
    untrained = RenderedExample([1, 2, 3], [0.0, 0.0, 0.0])
    with pytest.raises(RecordError, match=r"s.jsonl:1: no trained token$"):
        _fit([untrained])
    fitted, policy = _fit([untrained, _example(2, 2)], "skip")
    assert policy.skipped == {"s": {"no_target": 1}} and len(fitted.examples) == 1


def test_overlong_drop_counts_the_example_as_dropped():
    fitted, policy = _fit([_example(9, 2), _example(2, 2)], overlong="drop")
    assert fitted.dropped["s"] == 1 and fitted.truncated["s"] == 0
    assert policy.total() == 0 and len(fitted.examples) == 1
