"""The /compare and /same_films endpoints over HTTP: the app on loopback, driven with gradio_client."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.api]


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_compare_is_the_documented_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert sorted(api["named_endpoints"]) == ["/compare", "/inside", "/same_films"]  # the gr.api endpoints, no UI event
    params = [p["parameter_name"] for p in api["named_endpoints"]["/compare"]["parameters"]]
    assert params == ["user_id", "item_ids", "cf_model"]


def test_compare_scores(client):
    out = client.predict(user_id="1", item_ids="1, 50, 100", api_name="/compare")
    assert isinstance(out, list) and [o["id"] for o in out] == ["1", "50", "100"]
    for o in out:
        assert set(o) == {"id", "title", "warm", "score_text", "score_cf", "delta"}
        assert isinstance(o["warm"], bool) and isinstance(o["title"], str)
        assert 0 <= o["score_text"] <= 1 and 0 <= o["score_cf"] <= 1
        assert o["delta"] == pytest.approx(o["score_cf"] - o["score_text"], abs=2e-6)
    assert out[0]["title"] == "Toy Story"


@pytest.mark.parametrize("user_id, item_ids, message", [
    ("1", "1, 1", "duplicate"),
    ("1", "", "empty"),
    ("1", "12x", "not a numeric"),
    ("1", "99999", "unknown item"),
    ("1", ",".join(str(i) for i in range(1, 52)), "at most 50"),
    ("nobody", "1", "not a numeric user"),
    ("123456", "1", "unknown user"),
])
def test_compare_bad_input_raises(client, user_id, item_ids, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(user_id=user_id, item_ids=item_ids, api_name="/compare")


def test_compare_with_each_cf_backend(client, real_state):
    """cf_model picks the CF model behind the tokens: text scores stay, CF scores come from it."""
    from gradio_client.exceptions import AppError

    default = client.predict(user_id="1", item_ids="1, 50", api_name="/compare")
    for name in real_state.hub.backends():
        out = client.predict(user_id="1", item_ids="1, 50", cf_model=name, api_name="/compare")
        assert [o["score_text"] for o in out] == [o["score_text"] for o in default]
        if name == real_state.hub.backends()[0]:
            assert out == default
    with pytest.raises(AppError, match="not available; this app has"):
        client.predict(user_id="1", item_ids="1", cf_model="no-such-model", api_name="/compare")


def test_same_films_ranks_the_films_for_each_user(client):
    """/same_films: the same films for several real users, three ways, with how alike the rankings are."""
    from gradio_client.exceptions import AppError

    api = client.view_api(print_info=False, return_format="dict")
    params = [p["parameter_name"] for p in api["named_endpoints"]["/same_films"]["parameters"]]
    assert params == ["user_ids", "item_ids", "cf_model"]
    out = client.predict(user_ids="1, 2", item_ids="1, 50, 100", api_name="/same_films")
    assert [f["id"] for f in out["films"]] == ["1", "50", "100"] and [u["user"] for u in out["users"]] == ["1", "2"]
    assert set(out["agreement"]) == {"cf", "text", "alone"} and out["reading"]
    assert all(sorted(u[m]["ranks"]) == [1, 2, 3] for u in out["users"] for m in ("cf", "text", "alone"))
    with pytest.raises(AppError, match="give 2 to 5"):
        client.predict(user_ids="1", item_ids="1, 50, 100", api_name="/same_films")
