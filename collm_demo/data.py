"""MovieLens (and CSV) → interactions + items → CoLLM's evaluation protocol.

This module knows nothing of the LLM. Its output is a :class:`Dataset` whose ``rows``
table holds, for every interaction that has a history, everything a prompt needs:
user, item, label, split, the user's last <= 10 earlier interactions (items and labels)
and the warm/cold flags.

Protocol (CoLLM's): label = rating >= 4; all interactions sorted by time and split
globally 80/10/10 into train/valid/test (ties in time never straddle a boundary);
a row's history = the user's last <= 10 interactions *strictly* earlier in time;
rows with an empty history are dropped (and counted); warm = user and item each have
>= 3 train interactions.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .assets import require
from .config import ProtocolConfig, TrainConfig
from .errors import DataError

SPLITS = ("train", "valid", "test")
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]



@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame  # user, item, rating, timestamp, label, split (time-sorted)
    items: pd.DataFrame  # index item (str): title, year (Int64, may be NA), genres (str)
    rows: pd.DataFrame  # one per interaction with a history; see build_protocol
    counts: dict = field(default_factory=dict)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def split(self, name: str) -> pd.DataFrame:
        return self.rows[self.rows["split"] == name]

    def title(self, item: str) -> str:
        return str(self.items.at[item, "title"]) if item in self.items.index else f"item {item}"

    # A real user, as the app prompts them: their latest interactions before the test period.
    @cached_property
    def test_start(self) -> int:
        """The first timestamp of the test period."""
        inter = self.interactions
        return int(inter.loc[inter["split"] == "test", "timestamp"].min())

    @cached_property
    def pretest(self) -> dict[str, pd.DataFrame]:
        """Each user's interactions before the test period (train + valid), oldest first."""
        inter = self.interactions
        before = inter[inter["timestamp"] < self.test_start].sort_values("timestamp", kind="stable")
        return {str(u): g for u, g in before.groupby("user", sort=False)}

    def real_history(self, user: str, k: int | None = None) -> pd.DataFrame:
        """A real user's history, the one rule the app and ``Pipeline.rank_for_users`` share: their
        last <= ``k`` (default ``protocol.history_len``) interactions before the test period, oldest
        first; no row for a user without one. Not a protocol row's history (the interactions strictly
        before *that* row): this is what a user looks like once everything before the test is known."""
        frame = self.pretest.get(str(user))
        if frame is None:
            return self.interactions.iloc[:0]
        return frame.tail(k or self.protocol.history_len)


# ----------------------------------------------------------------------------- loading

def _year(value) -> object:
    """Years as Int64 or NA; RecBole's ML-100K writes 'unkonwn' for a few items."""
    try:
        year = int(float(value))
    except (TypeError, ValueError):
        return pd.NA
    return year if 1800 <= year <= 2100 else pd.NA


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def _split_title_year(raw: str) -> tuple[str, object]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep NA."""
    match = _TITLE_YEAR.match(raw.strip())
    if match:
        return match.group(1), int(match.group(2))
    return raw.strip(), pd.NA


def _read_text(path: Path, encoding: str = "utf-8-sig") -> str:
    """A whole text file; bytes that are not ``encoding`` are a :class:`DataError` naming the file
    and the line (a BOM, as spreadsheet programs write, is dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file "
                        "as UTF-8") from None


def _finish(inter: pd.DataFrame, items: pd.DataFrame, source: str,
            first_line: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalise types and check cross-file consistency. ``source`` names the interaction
    file and ``first_line`` the file line of its first data row, so errors point at a line."""
    if not len(inter):
        raise DataError(f"{source}: no interactions (the file has no data lines)")
    if not len(items):
        raise DataError(f"{source}: the item file beside it lists no items")
    inter = inter.reset_index(drop=True)
    for column in ("rating", "timestamp"):  # every loader: a number, and a finite one (no inf, no NaN)
        values = pd.to_numeric(inter[column], errors="coerce").astype(float)
        bad = np.flatnonzero(~np.isfinite(values.to_numpy()))
        if len(bad):
            raise DataError(f"{source} line {bad[0] + first_line}: {column} {inter.at[bad[0], column]!r} is not a "
                            "finite number")
        if not pd.api.types.is_numeric_dtype(inter[column]):  # numeric columns keep their dtype (int seconds)
            inter[column] = values
    inter = inter.astype({"user": str, "item": str})
    items = items.astype({"item": str}).drop_duplicates("item").set_index("item")
    items["year"] = items["year"].astype("Int64")
    items["title"] = items["title"].fillna("").astype(str)
    items["genres"] = items["genres"].fillna("").astype(str)
    unknown = ~inter["item"].isin(items.index)
    if unknown.any():
        first = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"{source} line {first + first_line}: item id {inter.at[first, 'item']!r} has no "
                        f"entry in the item file ({int(unknown.sum())} such interaction(s))")
    duplicated = inter.duplicated(["user", "item", "timestamp"])
    if duplicated.any():
        first = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(f"{source} line {first + first_line}: duplicate interaction (same user "
                        f"{inter.at[first, 'user']!r}, item {inter.at[first, 'item']!r} and timestamp "
                        "as an earlier line)")
    return inter, items


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    """A tab-separated file (RecBole's), its reading errors named with the file."""
    try:
        return pd.read_csv(io.StringIO(_read_text(path)), sep="\t", **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not readable as a tab-separated table ({str(err).strip()[:200]})") from None


def _load_recbole(folder: Path, stem: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = _read_table(folder / f"{stem}.inter")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter.rename(columns={"user_id": "user", "item_id": "item"})
    missing = {"user", "item", "rating", "timestamp"} - set(inter.columns)
    if missing:
        raise DataError(f"{folder / f'{stem}.inter'} line 1: missing column(s) {sorted(missing)}")
    items = _read_table(folder / f"{stem}.item", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    items = pd.DataFrame({
        "item": items["item_id"],
        "title": items["movie_title"],
        "year": [_year(v) for v in items.get("release_year", [None] * len(items))],
        "genres": items["class"].str.replace(" ", "|") if "class" in items else "",
    })
    return inter[["user", "item", "rating", "timestamp"]], items


def _read_ratings(path: Path, sep: str) -> pd.DataFrame:
    """user<sep>item<sep>rating<sep>timestamp lines; a bad line is reported with its number."""
    rows, lines = [], []
    with open(path, encoding="latin-1") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.strip().split(sep)
            if len(parts) != 4:
                raise DataError(f"{path} line {line_no}: expected user{sep}item{sep}rating{sep}timestamp "
                                f"(4 fields), found {len(parts)}")
            rows.append(parts)
            lines.append(line_no)
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    for column in ("rating", "timestamp"):
        values = pd.to_numeric(inter[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise DataError(f"{path} line {lines[bad[0]]}: {column} {inter[column].iloc[bad[0]]!r} is not a number")
        # 'inf' and 'nan' parse as numbers: an infinite timestamp breaks the time split later, far from here
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if len(bad):
            raise DataError(f"{path} line {lines[bad[0]]}: {column} {inter[column].iloc[bad[0]]!r} is not a "
                            "finite number")
        inter[column] = values
    return inter


def _load_ml100k(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = _read_ratings(folder / "u.data", "\t")
    records = []
    with open(folder / "u.item", encoding="latin-1") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|")
            if len(parts) < 24:
                raise DataError(f"{folder / 'u.item'} line {line_no}: expected 24 '|'-separated "
                                f"fields, found {len(parts)}")
            title, year = _split_title_year(parts[1])
            flags = parts[5:24]
            genres = "|".join(g for g, f in zip(ML100K_GENRES, flags) if f == "1")
            records.append({"item": parts[0], "title": title, "year": year, "genres": genres})
    return inter, pd.DataFrame(records)


def _load_ml1m(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter = _read_ratings(folder / "ratings.dat", "::")
    records = []
    with open(folder / "movies.dat", encoding="latin-1") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("::")
            if len(parts) != 3:
                raise DataError(f"{folder / 'movies.dat'} line {line_no}: expected id::title::genres")
            title, year = _split_title_year(parts[1])
            records.append({"item": parts[0], "title": title, "year": year, "genres": parts[2]})
    return inter, pd.DataFrame(records)


def _load_csv(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """interactions.csv (user,item,rating,timestamp) + items.csv (item,title[,genres][,year])."""
    inter_path, items_path = folder / "interactions.csv", folder / "items.csv"
    records = []
    reader = csv.reader(io.StringIO(_read_text(inter_path), newline=""))
    try:
        header = next(reader, [])
        missing = {"user", "item", "rating", "timestamp"} - set(header)
        if missing:
            raise DataError(f"{inter_path} line 1: missing column(s) {sorted(missing)}")
        where = {name: header.index(name) for name in ("user", "item", "rating", "timestamp")}
        end = reader.line_num
        for fields in reader:
            line, end = end + 1, reader.line_num  # the record's first line: the one after the last record
            if not fields:
                continue
            if any("\n" in f or "\r" in f for f in fields):  # no field of this file ever spans lines
                raise DataError(f"{inter_path} line {line}: a quote opened on this line is never closed "
                                f"(the field runs on to line {end})")
            if len(fields) != len(header):
                raise DataError(f"{inter_path} line {line}: expected {len(header)} comma-separated fields "
                                f"({','.join(header)[:80]}), found {len(fields)}")
            row = {name: fields[n] for name, n in where.items()}
            try:
                rating = float(row["rating"])
            except ValueError:
                raise DataError(f"{inter_path} line {line}: rating {row['rating'][:40]!r} is not a number") from None
            try:
                timestamp = float(row["timestamp"])
            except ValueError:
                try:
                    timestamp = pd.Timestamp(row["timestamp"]).timestamp()
                except (TypeError, ValueError):
                    raise DataError(f"{inter_path} line {line}: bad timestamp {row['timestamp'][:40]!r} "
                                    "(want seconds since 1970 or an ISO date)") from None
            for column, value in (("rating", rating), ("timestamp", timestamp)):
                if not math.isfinite(value):
                    raise DataError(f"{inter_path} line {line}: {column} {row[column][:40]!r} is not a finite number")
            records.append((row["user"], row["item"], rating, timestamp))
    except csv.Error as err:  # e.g. a NUL byte
        raise DataError(f"{inter_path} line {reader.line_num}: not readable as CSV ({err})") from None
    inter = pd.DataFrame(records, columns=["user", "item", "rating", "timestamp"])
    try:
        items = pd.read_csv(io.StringIO(_read_text(items_path)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{items_path}: not readable as CSV ({str(err).strip()[:200]})") from None
    missing = {"item", "title"} - set(items.columns)
    if missing:
        raise DataError(f"{items_path} line 1: missing column(s) {sorted(missing)}")
    if not len(items):
        raise DataError(f"{items_path}: no items (the file has no data lines)")
    items = pd.DataFrame({
        "item": items["item"], "title": items["title"],
        "year": [_year(v) for v in items.get("year", pd.Series([None] * len(items)))],
        "genres": items.get("genres", pd.Series([""] * len(items))),
    })
    return inter, items


def detect_format(folder: Path) -> str:
    if any(folder.glob("*.inter")):
        return "recbole"
    if (folder / "u.data").exists() and (folder / "u.item").exists():
        return "ml-100k"
    if (folder / "ratings.dat").exists() and (folder / "movies.dat").exists():
        return "ml-1m"
    if (folder / "interactions.csv").exists() and (folder / "items.csv").exists():
        return "csv"
    raise DataError(
        f"{folder}: no known data files. Expected one of: u.data + u.item (ml-100k), "
        "ratings.dat + movies.dat (ml-1m), interactions.csv + items.csv, or RecBole *.inter/*.item"
    )


def check_data_path(path: str | os.PathLike) -> Path:
    """A data folder that exists (the CLI calls this before loading anything heavy)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"data path {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    return folder


def load_interactions(path: str | os.PathLike | None = None) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Load (name, interactions, items). ``None`` = the embedded ML-100K (fetched if needed)."""
    if path is None:
        folder = require("data")
        inter, items = _load_recbole(folder, "ml-100k")
        return "ml-100k", *_finish(inter, items, str(folder / "ml-100k.inter"), first_line=2)
    folder = check_data_path(path)
    fmt = detect_format(folder)
    if fmt == "recbole":
        stem = next(folder.glob("*.inter")).stem
        inter, items = _load_recbole(folder, stem)
        source, first_line = folder / f"{stem}.inter", 2
    else:
        inter, items = {"ml-100k": _load_ml100k, "ml-1m": _load_ml1m, "csv": _load_csv}[fmt](folder)
        source = folder / {"ml-100k": "u.data", "ml-1m": "ratings.dat", "csv": "interactions.csv"}[fmt]
        first_line = 2 if fmt == "csv" else 1
    return f"{fmt}:{folder.name}", *_finish(inter, items, str(source), first_line)


# ---------------------------------------------------------------------------- protocol

def split_by_time(inter: pd.DataFrame, fractions: tuple[float, float, float]) -> pd.DataFrame:
    """Sort globally by time and cut 80/10/10; a boundary moves forward past equal timestamps
    so that every train row is strictly earlier than every valid/test row."""
    inter = inter.sort_values(["timestamp", "user", "item"], kind="stable").reset_index(drop=True)
    stamps = inter["timestamp"].to_numpy()
    n = len(inter)
    cuts = []
    for frac in (fractions[0], fractions[0] + fractions[1]):
        cut = int(round(n * frac))
        while 0 < cut < n and stamps[cut] == stamps[cut - 1]:
            cut += 1
        cuts.append(cut)
    split = np.full(n, "test", dtype=object)
    split[: cuts[0]] = "train"
    split[cuts[0]: cuts[1]] = "valid"
    inter["split"] = split
    return inter


def month_index(timestamps: pd.Series) -> np.ndarray:
    """Months since the data's first month (the paper: (year − first year) × 12 + month, shifted to 0)."""
    when = pd.to_datetime(timestamps, unit="s", utc=True)
    months = (when.dt.year * 12 + when.dt.month).to_numpy()
    return months - months.min()


def split_by_month(inter: pd.DataFrame, month_splits: tuple[tuple[int, int], ...]) -> pd.DataFrame:
    """CoLLM's ML-1M split: each split is a range of months; rows in no range are dropped."""
    inter = inter.sort_values(["timestamp", "user", "item"], kind="stable").reset_index(drop=True)
    months = month_index(inter["timestamp"])
    split = np.full(len(inter), None, dtype=object)
    for name, (first, last) in zip(SPLITS, month_splits):
        split[(months >= first) & (months <= last)] = name
    inter["split"] = split
    return inter[inter["split"].notna()].reset_index(drop=True)


def build_protocol(name: str, inter: pd.DataFrame, items: pd.DataFrame,
                   protocol: ProtocolConfig | None = None) -> Dataset:
    """The protocol applied to raw interactions: labels, splits, each row's history, warm / cold
    flags, the rows kept (those with a history, unless ``keep_empty_history``) and their counts."""
    protocol = protocol or ProtocolConfig()
    inter = inter.copy()
    inter["label"] = (inter["rating"] >= protocol.positive_rating).astype(np.int64)
    if protocol.month_splits:
        inter = split_by_month(inter, protocol.month_splits)
        if not len(inter):
            raise DataError(f"{name}: no interaction falls in the months of protocol {protocol.name!r} "
                            f"({protocol.month_splits})")
    else:
        inter = split_by_time(inter, protocol.split)
    train = inter[inter["split"] == "train"]
    user_train = train["user"].value_counts()
    item_train = train["item"].value_counts()
    # ``liked_items``: the paper's history (the last <= 10 liked films strictly earlier, from the whole
    # past), which the prompts show with ``--history-style liked``; the CF fold-in reads the other.
    inter["history_items"], inter["history_labels"], inter["liked_items"] = histories(inter, protocol)
    inter["user_train_count"] = inter["user"].map(user_train).fillna(0).astype(int)
    inter["item_train_count"] = inter["item"].map(item_train).fillna(0).astype(int)
    inter["cold_user"] = inter["user_train_count"] < protocol.warm_min
    inter["cold_item"] = inter["item_train_count"] < protocol.warm_min
    inter["warm"] = ~(inter["cold_user"] | inter["cold_item"])
    has_history = inter["history_items"].map(len) > 0
    rows = inter[has_history | protocol.keep_empty_history].reset_index(drop=True)
    return Dataset(name=name, interactions=inter.drop(columns=["history_items", "history_labels", "liked_items"]),
                   items=items, rows=rows, counts=split_counts(inter, rows, items), protocol=protocol)


def histories(inter: pd.DataFrame, protocol: ProtocolConfig) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(items, labels, liked items) of each interaction's history, in the order of ``inter``'s rows:
    the last ``history_len`` interactions of its user before it (only the liked ones with
    ``history_positive_only``), and the last ``history_len`` liked ones before it, in one pass."""
    # Walk each user's interactions in time order; rows sharing a timestamp share the history of
    # everything strictly earlier (no peeking at same-time rows).
    hist_items: list[tuple] = [()] * len(inter)
    hist_labels: list[tuple] = [()] * len(inter)
    hist_liked: list[tuple] = [()] * len(inter)
    order = inter.sort_values(["user", "timestamp"], kind="stable")
    k = protocol.history_len
    for _, group in order.groupby("user", sort=False):
        idx = group.index.to_numpy()
        stamps = group["timestamp"].to_numpy()
        its = group["item"].tolist()
        labs = group["label"].tolist()
        start = 0  # first index of the current equal-timestamp block
        liked_at = [n for n, y in enumerate(labs) if y]  # positions of the liked interactions
        liked_before = np.cumsum([0] + labs)  # liked_before[j] = liked interactions among the first j
        for j in range(len(idx)):
            if j > 0 and stamps[j] != stamps[j - 1]:
                start = j
            count = int(liked_before[start])
            liked = tuple(its[n] for n in liked_at[max(0, count - k): count])
            hist_liked[idx[j]] = liked
            if protocol.history_positive_only:
                hist_items[idx[j]], hist_labels[idx[j]] = liked, (1,) * len(liked)
                continue
            lo = max(0, start - k)
            hist_items[idx[j]] = tuple(its[lo:start])
            hist_labels[idx[j]] = tuple(labs[lo:start])
    return hist_items, hist_labels, hist_liked


def split_counts(inter: pd.DataFrame, rows: pd.DataFrame, items: pd.DataFrame) -> dict:
    """What the protocol made of the data (``Dataset.counts``): sizes, and per split the rows kept,
    their positive rate, warm / cold shares and time range, and the rows dropped for no history."""
    counts: dict = {"interactions": int(len(inter)), "users": int(inter["user"].nunique()),
                    "items": int(len(items)), "dropped_no_history": {}, "splits": {}}
    for split in SPLITS:
        part = inter[inter["split"] == split]
        kept = rows[rows["split"] == split]
        counts["dropped_no_history"][split] = int(len(part) - len(kept))
        counts["splits"][split] = {
            "rows": int(len(kept)),
            "positive_rate": round(float(kept["label"].mean()), 4) if len(kept) else None,
            "warm": int(kept["warm"].sum()), "cold": int((~kept["warm"]).sum()),
            "cold_user": int(kept["cold_user"].sum()), "cold_item": int(kept["cold_item"].sum()),
            "time_range": [int(part["timestamp"].min()), int(part["timestamp"].max())] if len(part) else None,
        }
    return counts


def load_dataset(path: str | os.PathLike | None = None,
                 protocol: ProtocolConfig | None = None) -> Dataset:
    """Interactions + protocol; data too small for every split to hold a row is refused here,
    not found later as an evaluation of 0 rows (AUC NaN) or a training run on nothing."""
    name, inter, items = load_interactions(path)
    dataset = build_protocol(name, inter, items, protocol)
    rows = {split: dataset.counts["splits"][split]["rows"] for split in SPLITS}
    if not all(rows.values()):
        raise DataError(f"{path if path is not None else name}: too few interactions for protocol "
                        f"{dataset.protocol.name!r}: {len(inter)} interactions give "
                        + ", ".join(f"{split} {n}" for split, n in rows.items())
                        + " rows with a history; every split needs at least one")
    return dataset


def format_counts(counts: dict) -> str:
    lines = [f"{counts['interactions']} interactions, {counts['users']} users, {counts['items']} items"]
    for split, c in counts["splits"].items():
        lines.append(f"  {split:5s}: {c['rows']:6d} rows (dropped without history: "
                     f"{counts['dropped_no_history'][split]}), positive rate {c['positive_rate']}, "
                     f"warm {c['warm']}, cold {c['cold']} (cold user {c['cold_user']}, cold item {c['cold_item']})")
    return "\n".join(lines)


def history_like_share(rows: pd.DataFrame) -> np.ndarray:
    """Per row, the share of "(liked)" marks among its history's films (0.5 for an empty history):
    the one-line baseline a text model that counts the marks would match."""
    return np.array([float(np.mean(labels)) if len(labels) else 0.5 for labels in rows["history_labels"]],
                    dtype=np.float32)


# ------------------------------------------------------------------ which rows train what

def sample_rows(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``n`` rows (all of them, shuffled, when there are fewer).
    A seeded sample of k rows is the first k rows of one fixed permutation of ``rows``."""
    if n >= len(rows):
        return rows.sample(frac=1.0, random_state=seed)
    return rows.sample(n=n, random_state=seed)


def early_stop_rows(dataset: Dataset, cfg: TrainConfig) -> pd.DataFrame:
    """The fixed sample of valid rows both LLM stages early-stop on (never trained on)."""
    return sample_rows(dataset.split("valid"), cfg.eval_rows, cfg.seed + 1)


def lora_rows(dataset: Dataset, cfg: TrainConfig, n: int | None = None) -> pd.DataFrame:
    """Stage 1's rows: a seeded sample of train rows, spread over many users (the last train rows
    come from very few users)."""
    return sample_rows(dataset.split("train"), cfg.lora_rows if n is None else n, cfg.seed)


def dev_rows(dataset: Dataset, users: int = 50, per_class: int = 6, seed: int = 7) -> pd.DataFrame:
    """The fast loop's fixed sample (``python -m collm_demo experiment``): valid rows of ``users``
    users who have at least ``per_class`` liked and ``per_class`` disliked valid rows, that many of
    each per user (seeded), so every user counts in UAUC with the same weight. Never trained on:
    stage 2's pool leaves them out, as it leaves out the early-stop rows."""
    valid = dataset.split("valid")
    counts = valid.groupby("user")["label"].agg(["sum", "count"])
    eligible = counts[(counts["sum"] >= per_class) & (counts["count"] - counts["sum"] >= per_class)].index
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(np.asarray(sorted(eligible)), size=min(users, len(eligible)), replace=False).tolist())
    parts = [valid[(valid["user"] == user) & (valid["label"] == label)].sample(n=per_class, random_state=seed)
             for user in chosen for label in (1, 0)]
    return pd.concat(parts) if parts else valid.iloc[:0]


def projector_pool(dataset: Dataset, cfg: TrainConfig) -> pd.DataFrame:
    """Valid rows minus the early-stop rows and the fast loop's sample (``dev_rows``): what stage 2
    draws from. The CF model has seen the labels of train rows, so their CF vectors "know" the
    answer; valid rows are unseen by it and are distributed like test rows (most of their users are
    new and folded in)."""
    valid = dataset.split("valid")
    held_out = early_stop_rows(dataset, cfg).index.union(dev_rows(dataset).index)
    return valid.drop(index=valid.index.intersection(held_out))


def projector_rows(dataset: Dataset, cfg: TrainConfig, n: int | None = None) -> pd.DataFrame:
    """Stage 2's rows: a seeded sample of ``projector_pool``."""
    return sample_rows(projector_pool(dataset, cfg), cfg.projector_rows if n is None else n, cfg.seed)
