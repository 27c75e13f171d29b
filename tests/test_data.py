"""Protocol: formats, time split without leakage, histories, warm/cold counts, bad files."""

from __future__ import annotations

import pandas as pd
import pytest

from collm_demo.data import DataError, build_protocol, load_dataset, load_interactions
from conftest import synthetic_ratings, write_ml1m, write_ml100k


def check_protocol(ds) -> None:
    inter, rows = ds.interactions, ds.rows
    # 1. every train interaction precedes every valid/test interaction, strictly
    by_split = {s: inter[inter["split"] == s]["timestamp"] for s in ("train", "valid", "test")}
    assert by_split["train"].max() < by_split["valid"].min()
    assert by_split["valid"].max() < by_split["test"].min()
    # 2. every history item was consumed by the same user strictly before the row
    when = {(u, i): t for u, i, t in inter[["user", "item", "timestamp"]].itertuples(index=False)}
    for row in rows.itertuples():
        assert 0 < len(row.history_items) <= ds.protocol.history_len
        assert len(row.history_items) == len(row.history_labels)
        stamps = [when[(row.user, h)] for h in row.history_items]
        assert max(stamps) < row.timestamp
        assert stamps == sorted(stamps)  # oldest first, latest last
    # 3. counts are consistent
    for split, c in ds.counts["splits"].items():
        kept = rows[rows["split"] == split]
        assert c["rows"] == len(kept) == c["warm"] + c["cold"]
        assert c["rows"] + ds.counts["dropped_no_history"][split] == int((inter["split"] == split).sum())
    warm_expected = (rows["user_train_count"] >= 3) & (rows["item_train_count"] >= 3)
    assert (rows["warm"] == warm_expected).all()
    assert (rows["cold_user"] == (rows["user_train_count"] < 3)).all()


def test_ml100k_format_and_protocol(tiny_data_dir):
    ds = load_dataset(tiny_data_dir)
    assert ds.name.startswith("ml-100k")
    assert ds.items.at["1", "title"] == "Toy Story" and ds.items.at["1", "year"] == 1991
    assert set(ds.rows["label"]) == {0, 1}
    check_protocol(ds)


def test_ml1m_format(tmp_path):
    ds = load_dataset(write_ml1m(tmp_path / "ml1m"))
    assert ds.name.startswith("ml-1m") and ds.items.at["2", "genres"] == "Comedy|Drama"
    check_protocol(ds)


def test_csv_format_and_iso_dates(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    lines = ["user,item,rating,timestamp"] + [
        f"{u},{i},{r},{pd.Timestamp(t, unit='s').isoformat() if n % 2 else t}"
        for n, (u, i, r, t) in enumerate(synthetic_ratings())]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    (folder / "items.csv").write_text("item,title,genres\n" + "".join(f"{n},Film {n},Drama\n" for n in range(1, 13)))
    check_protocol(load_dataset(folder))


def test_ties_never_straddle_a_split_boundary():
    # 10 interactions, all at one timestamp except the last: the 80% cut must move past the tie.
    inter = pd.DataFrame({"user": [str(u % 3) for u in range(10)], "item": [str(i) for i in range(10)],
                          "rating": [5] * 10, "timestamp": [100] * 9 + [200]})
    items = pd.DataFrame({"title": [f"m{i}" for i in range(10)], "year": [pd.NA] * 10, "genres": [""] * 10},
                         index=[str(i) for i in range(10)])
    items["year"] = items["year"].astype("Int64")
    ds = build_protocol("toy", inter, items)
    assert (ds.interactions["split"] == "train").sum() == 9


@pytest.mark.parametrize("content, reason", [
    ("user,item,rating\n1,1,5\n", "missing column"),
    ("user,item,rating,timestamp\n1,1,5,yesterday-ish\n", "line 2: bad timestamp"),
    ("user,item,rating,timestamp\n1,99,5,1000\n", "no entry in the item file"),
    ("user,item,rating,timestamp\n1,1,5,1000\n1,1,4,1000\n", "duplicate interaction"),
    ("user,item,rating,timestamp\n1,1,five,1000\n", "line 2: rating"),
])
def test_csv_errors_name_file_line_and_reason(tmp_path, content, reason):
    (tmp_path / "interactions.csv").write_text(content)
    (tmp_path / "items.csv").write_text("item,title\n1,Heat\n")
    with pytest.raises(DataError, match=reason) as err:
        load_interactions(tmp_path)
    assert "interactions.csv" in str(err.value) or "no entry" in str(err.value)


@pytest.mark.parametrize("fmt", ["ml-100k", "ml-1m"])
@pytest.mark.parametrize("bad_line, reason", [
    ("1{s}2{s}5{s}yesterday", "timestamp 'yesterday' is not a number"),
    ("1{s}2{s}five{s}1000", "rating 'five' is not a number"),
    ("1{s}2{s}5", "4 fields"),
    ("1{s}99{s}5{s}1000", "item id '99' has no entry in the item file"),
    ("", "duplicate"),
])
def test_movielens_errors_name_file_line_and_reason(tmp_path, fmt, bad_line, reason):
    folder = write_ml100k(tmp_path / "d") if fmt == "ml-100k" else write_ml1m(tmp_path / "d")
    name, sep = ("u.data", "\t") if fmt == "ml-100k" else ("ratings.dat", "::")
    lines = (folder / name).read_text().splitlines()
    if reason == "duplicate":  # the first line's user, item and time again (another rating)
        user, item, _, stamp = lines[0].split(sep)
        bad_line = sep.join([user, item, "3", stamp])
    lines.append(bad_line.format(s=sep))
    (folder / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=reason) as err:
        load_interactions(folder)
    assert f"{name} line {len(lines)}" in str(err.value)


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no known data files"):
        load_interactions(tmp_path)


def test_ml100k_bad_item_line(tmp_path):
    folder = write_ml100k(tmp_path / "bad")
    (folder / "u.item").write_text("1|Heat (1995)|only three fields\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"u.item line 1"):
        load_interactions(folder)


@pytest.mark.integration
def test_embedded_ml100k_protocol():
    ds = load_dataset()
    assert ds.counts["interactions"] == 100_000
    assert ds.items["year"].isna().sum() >= 1  # RecBole's 'unkonwn' year becomes NA
    check_protocol(ds)


# ------------------------------------------------------------------ the paper's ML-1M protocol

def test_collm_ml1m_protocol_splits_by_month_and_keeps_liked_histories(tmp_path):
    import pandas as pd

    from collm_demo.config import ProtocolConfig
    from collm_demo.data import month_index

    first = pd.Timestamp("2000-04-15", tz="UTC")
    rows = []
    for month in range(36):  # 2000-04 .. 2003-03: months 0..35
        stamp = int((first + pd.DateOffset(months=month)).timestamp())
        for user in (1, 2, 3):
            item = 1 + (month + user) % 12
            rows.append((user, item, 5 if (month + user) % 3 else 2, stamp + user))
    folder = write_ml1m(tmp_path / "ml1m", rows)
    dataset = load_dataset(folder, ProtocolConfig.named("collm-ml1m"))
    inter = dataset.interactions
    months = month_index(pd.Series([r[3] for r in rows]))
    assert sorted(set(months)) == list(range(36))
    kept = inter.assign(month=month_index(inter["timestamp"]) + 14)  # the kept rows start at month 14
    assert kept.groupby("split")["month"].agg(["min", "max"]).to_dict("index") == {
        "train": {"min": 14, "max": 23}, "valid": {"min": 24, "max": 28}, "test": {"min": 29, "max": 33}}
    assert len(inter) == 3 * 20  # months 0-13 and 34-35 dropped
    # every kept row is a protocol row, empty histories included; histories hold liked items only
    assert len(dataset.rows) == len(inter) and dataset.counts["dropped_no_history"]["train"] == 0
    firsts = dataset.rows.sort_values("timestamp").groupby("user").head(1)
    assert (firsts["history_items"].map(len) == 0).all()  # each user's first kept row: kept, history empty
    assert all(set(labels) <= {1} for labels in dataset.rows["history_labels"])
    user1 = dataset.rows[dataset.rows["user"] == "1"].sort_values("timestamp")
    liked = [i for i, y in zip(user1["item"], user1["label"]) if y]
    assert user1["history_items"].iloc[-1] == tuple(liked[:-1][-10:] if user1["label"].iloc[-1] else liked[-10:])


def test_checkpoints_are_not_scored_under_another_protocol(tiny_data_dir):
    from collm_demo.errors import CheckpointError
    from collm_demo.pipeline import check_protocol

    dataset = load_dataset(tiny_data_dir)
    check_protocol({}, dataset)  # no manifest: nothing to check
    check_protocol({"data": {"protocol": {"split": [0.8, 0.1, 0.1]}}}, dataset)  # recorded before names: global
    with pytest.raises(CheckpointError, match="protocol 'collm-ml1m'.*--protocol collm-ml1m"):
        check_protocol({"data": {"protocol": {"name": "collm-ml1m"}}}, dataset)
