"""The catalogue of users and items the app offers, built from a :class:`Dataset` alone (no model).

Indexes of the protocol's splits: each user's interactions before the test period (their
history) and in it (honest candidates with true labels), training counts (warm = at least
``protocol.warm_min`` training interactions), dropdown choices and the first example user.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..data import Dataset

_COLUMNS = ["item", "label", "timestamp", "rating"]

# Good demo users of the embedded data set, best first, chosen by measuring (not guessing): all 13
# warm users with at least 6 liked and 6 disliked test items were scored on their 20 deterministic,
# balanced test items (recommend.candidate_set "test", n=20) with the shipped MF checkpoint; those
# with a full 20-item set are ranked by within-user AUC with CF tokens minus without. Measured
# again on 2026-12-08 with the shipped (grouped-stage2) MF projector: 94 0.26 -> 0.85 (text-only
# flat at 0.86-0.88), 738 0.24 -> 0.77, 58 0.45 -> 0.81, 532 0.60 -> 0.90, 416 0.63 -> 0.91 (then
# 624 0.59 -> 0.84, 708, 880, 655; three of the 12 with a full set rank worse with CF: 125, 279, 186). Re-measure
# when the checkpoints change (docs/experiments.md, 2026-12-08, has the script).
# The page opens on the first; the Recommend tab lists them all with their liked/disliked counts.
DEMO_USERS: dict[str, tuple[str, ...]] = {"ml-100k": ("94", "738", "58", "532", "416")}


@dataclass(frozen=True)
class UserInfo:
    user: str
    n_train: int  # training interactions (what the CF model saw)
    n_pretest: int  # interactions before the test period (train + valid)
    n_test: int  # interactions in the test period (honest candidates)
    n_test_pos: int
    warm_min: int = 3  # the protocol's threshold

    @property
    def warm(self) -> bool:
        return self.n_train >= self.warm_min

    def label(self) -> str:
        status = "warm" if self.warm else "cold"
        return (f"user {self.user} · {status} · {self.n_train} train interactions · "
                f"{self.n_test} test items")


class Catalog:
    """Users, items, histories and true labels of one dataset."""

    def __init__(self, dataset: Dataset):
        self.dataset = ds = dataset
        inter = ds.interactions
        self.warm_min = ds.protocol.warm_min
        self.test_start = ds.test_start
        train = inter[inter["split"] == "train"]
        self.item_train = train["item"].value_counts().to_dict()
        self.user_train = train["user"].value_counts().to_dict()
        test = inter[inter["split"] == "test"]
        self._pretest = ds.pretest
        self._test = {u: g for u, g in test.groupby("user", sort=False)}
        self.users: dict[str, UserInfo] = {}
        for user in sorted(inter["user"].unique(), key=lambda u: (len(u), u)):
            t = self._test.get(user)
            self.users[user] = UserInfo(
                user=user, n_train=int(self.user_train.get(user, 0)),
                n_pretest=0 if user not in self._pretest else len(self._pretest[user]),
                n_test=0 if t is None else len(t), n_test_pos=0 if t is None else int(t["label"].sum()),
                warm_min=self.warm_min)
        self.item_ids = [str(i) for i in sorted(ds.items.index, key=lambda i: (len(str(i)), str(i)))]
        self.item_title = {i: ds.title(i) for i in self.item_ids}

    # ------------------------------------------------------------------ items
    def item_warm(self, item: str) -> bool:
        return self.item_train.get(item, 0) >= self.warm_min

    def item_label(self, item: str) -> str:
        """'Toy Story (1995) · #1' for dropdowns."""
        year = self.dataset.items.at[item, "year"] if item in self.dataset.items.index else pd.NA
        year = "" if pd.isna(year) else f" ({int(year)})"
        return f"{self.item_title.get(item, item)}{year} · #{item}"

    def item_choices(self) -> list[tuple[str, str]]:
        out = []
        for item in self.item_ids:
            n = self.item_train.get(item, 0)
            status = "warm" if n >= self.warm_min else "cold"
            out.append((f"{self.item_label(item)} · {status}, {n} train", item))
        return out

    # ------------------------------------------------------------------ users
    def user_choices(self) -> list[tuple[str, str]]:
        """Users that have a history before the test period; those with test items first."""
        usable = [u for u in self.users.values() if u.n_pretest > 0]
        usable.sort(key=lambda u: (u.n_test == 0, -u.n_test, len(u.user), u.user))
        return [(u.label(), u.user) for u in usable]

    def demo_users(self) -> list[UserInfo]:
        """The curated demo users of this data set that are usable here (warm, a history, test
        items of both answers); none for a data set without a list."""
        found = [self.users.get(u) for u in DEMO_USERS.get(self.dataset.name, ())]
        return [u for u in found if u is not None and u.warm and u.n_pretest > 0
                and 0 < u.n_test_pos < u.n_test]

    def default_user(self) -> str:
        """The first curated demo user (see DEMO_USERS); for other data sets a warm user whose
        test items (the honest candidates) include liked and disliked, warm and cold movies."""
        demo = self.demo_users()
        if demo:
            return demo[0].user
        def score(u: UserInfo) -> tuple:
            items = self.test_items(u.user)["item"]
            cold = sum(not self.item_warm(i) for i in items)
            return (min(cold, len(items) - cold), min(u.n_test_pos, u.n_test - u.n_test_pos), u.user)

        candidates = [u for u in self.users.values()
                      if u.warm and 10 <= u.n_test <= 20 and 0 < u.n_test_pos < u.n_test and u.n_pretest >= 10]
        if candidates:
            return max(candidates, key=score).user
        usable = [u for u in self.users.values() if u.n_pretest > 0] or list(self.users.values())
        return max(usable, key=lambda u: (u.warm, u.n_test > 0, -abs(u.n_test - 20), u.user)).user

    def real_history(self, user: str, k: int | None = None) -> pd.DataFrame:
        """The user's last <= k interactions before the test period (train + valid), oldest first
        (``Dataset.real_history``: the rule the engine's ``Pipeline.rank_for_users`` uses too)."""
        return self.dataset.real_history(user, k)[_COLUMNS]

    def test_items(self, user: str) -> pd.DataFrame:
        frame = self._test.get(user)
        if frame is None:
            return pd.DataFrame(columns=_COLUMNS)
        return frame[_COLUMNS]

    def true_labels(self, user: str | None) -> dict[str, int]:
        """Known labels of the user's test-period interactions (the honest ones)."""
        frame = self._test.get(user) if user else None
        if frame is None:
            return {}
        return {str(i): int(y) for i, y in zip(frame["item"], frame["label"])}
