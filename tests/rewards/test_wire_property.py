"""The reward server's request parser as a property: whatever bytes arrive, the answer is a request or a
WireError naming what is wrong (the server's 400), never another exception (a 500, a traceback)."""

import json
import urllib.error
import urllib.request

import pytest
import torch
from helpers import serve_reward
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from rlkit.rewards.programmatic import SourceConsistency
from rlkit.rewards.wire import WireError, decode_input

DTYPES = [torch.uint8, torch.float32, torch.float16, torch.int64, torch.int32, torch.bool]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=3), max_leaves=8)


@st.composite
def requests(draw):
    """safetensors payloads near a valid request: each field may be absent, of another shape, type or value."""
    n = draw(st.integers(0, 3))
    tensors = {}
    for name in ("edited", "source", "group_ids"):
        if draw(st.integers(0, 9)) == 0:
            continue  # absent
        shape = draw(st.sampled_from([(n, 3, 4, 4), (n, 3, 4, 4), (n,), (n, 1, 4, 4), (n, 3, 0, 4), (n + 1, 3, 4, 4)]))
        if name == "group_ids":
            shape = draw(st.sampled_from([(n,), (n,), (n, 1)]))
        dtype = draw(st.sampled_from(DTYPES))
        value = draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, float("nan"), float("inf")]))
        tensors[name] = torch.full(shape, value).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=dtype)
    meta = {}
    if draw(st.booleans()):
        meta["instructions"] = draw(st.one_of(st.lists(st.text(max_size=5), min_size=n, max_size=n), JSON))
    if draw(st.booleans()):
        meta["metadata"] = draw(st.one_of(st.lists(st.dictionaries(st.text(max_size=3), JSON, max_size=2),
                                                   min_size=n, max_size=n), JSON))
    if draw(st.integers(0, 3)) == 0:  # several reference images per group, or something like it
        meta["references"] = draw(st.one_of(st.just({"0": 2}), st.just({"0": 1, "1": 1}), JSON))
        for key in draw(st.lists(st.sampled_from(["reference/0/0", "reference/0/1", "reference/1/0"]), max_size=3)):
            shape = draw(st.sampled_from([(3, 4, 6), (3, 5, 5), (1, 4, 4), (4, 4), (3, 0, 2)]))
            tensors[key] = torch.full(shape, draw(st.sampled_from([0.0, 0.5, 2.0, float("nan")])))
    text = json.dumps(meta) if draw(st.integers(0, 4)) else draw(st.text(max_size=10))
    return save(tensors, metadata={"rlkit": text}) if tensors else draw(st.binary(max_size=40))


def _parses_or_names_the_problem(data: bytes) -> None:
    try:
        batch = decode_input(data)
    except WireError as err:
        assert str(err)
        return
    n = len(batch)
    assert n >= 1 and batch.edited.shape == batch.source.shape and torch.isfinite(batch.edited).all()
    assert len(batch.instructions) == n and all(isinstance(t, str) for t in batch.instructions)
    assert len(batch.metadata) == n and all(isinstance(m, dict) for m in batch.metadata)
    for refs in batch.all_references:
        assert refs and all(r.ndim == 3 and r.shape[0] == 3 and torch.isfinite(r).all() for r in refs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_a_reason(data):
    _parses_or_names_the_problem(data)


@settings(max_examples=300, deadline=None)
@given(requests())
def test_near_valid_requests_parse_or_are_refused_with_a_reason(data):
    _parses_or_names_the_problem(data)


@pytest.fixture(scope="module")
def server_url():
    server, url = serve_reward(SourceConsistency())
    yield url
    server.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(requests(), st.binary(min_size=1, max_size=100)))
def test_the_server_answers_400_or_200_never_500(server_url, data):
    url = server_url
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/score", data=data, method="POST"), timeout=10):
            pass
    except urllib.error.HTTPError as err:
        assert err.code == 400, (err.code, err.read())
        assert json.loads(err.read())["error"]


@pytest.mark.parametrize("field,value,needle", [
    ("metadata", 5, "'metadata' must be a list of 2 JSON objects"),
    ("metadata", [1, 2], "'metadata' must be a list of 2 JSON objects"),
    ("instructions", [1, 2], "'instructions' must be a list of 2 strings"),
])
def test_malformed_metadata_is_named(field, value, needle):
    meta = {"instructions": ["a", "b"], "metadata": [{}, {}], field: value}
    data = save({"edited": torch.zeros(2, 3, 4, 4), "source": torch.zeros(2, 3, 4, 4),
                 "group_ids": torch.zeros(2, dtype=torch.int64)}, metadata={"rlkit": json.dumps(meta)})
    with pytest.raises(WireError, match=needle):
        decode_input(data)


def test_references_travel_once_per_group_and_come_back_in_order():
    """A two-reference batch through the wire: every sample gets its group's references, in order, at their own
    sizes (8-bit exact); a batch without references stays without."""
    from rlkit.rewards import RewardInput, encode_input

    g = torch.Generator().manual_seed(0)
    img = lambda *s: (torch.rand(*s, generator=g) * 255).round() / 255  # noqa: E731
    refs = [[img(3, 4, 6), img(3, 6, 4)], [img(3, 5, 5), img(3, 4, 4)]]
    batch = RewardInput(img(4, 3, 4, 6), img(4, 3, 4, 6), ["a", "a", "b", "b"], torch.tensor([0, 0, 1, 1]),
                        references=[refs[0], refs[0], refs[1], refs[1]])
    data = encode_input(batch)
    back = decode_input(data)
    assert [[tuple(r.shape) for r in rs] for rs in back.references] == [[(3, 4, 6), (3, 6, 4)]] * 2 + \
        [[(3, 5, 5), (3, 4, 4)]] * 2
    assert all(torch.equal(a, b) for x, y in zip(back.references, batch.references) for a, b in zip(x, y))
    assert decode_input(encode_input(RewardInput(batch.edited, batch.source, batch.instructions,
                                                 batch.group_ids))).references is None
    assert len(data) < len(encode_input(RewardInput(batch.edited, batch.source, batch.instructions,
                                                    torch.arange(4), references=batch.references))) * 0.9
