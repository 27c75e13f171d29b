"""CF vectors made outside this project: scikit-learn's TruncatedSVD on the train matrix.

    python -m examples.svd_embeddings --out /tmp/svd        # from the repo root: users.npy, items.npy + id lists
    python -m collm_demo import-embeddings --name svd \\
        --users /tmp/svd/users.npy --user-ids /tmp/svd/user_ids.json \\
        --items /tmp/svd/items.npy --item-ids /tmp/svd/item_ids.json

The matrix holds +1 for a liked and -1 for a disliked train interaction (0 = unseen), so
user · item approximates the sign of the rating. CoLLM only needs the two tables: the
projector learns how to read them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.decomposition import TruncatedSVD

from collm_demo.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    users = sorted(train["user"].unique())
    items = sorted(train["item"].unique())
    u_index = {u: n for n, u in enumerate(users)}
    i_index = {i: n for n, i in enumerate(items)}
    values = np.where(train["label"].to_numpy() == 1, 1.0, -1.0)
    matrix = csr_matrix((values, (train["user"].map(u_index), train["item"].map(i_index))),
                        shape=(len(users), len(items)))
    svd = TruncatedSVD(n_components=min(args.dim, min(matrix.shape) - 1), random_state=0)
    user_vecs = svd.fit_transform(matrix)  # U * Sigma
    item_vecs = svd.components_.T  # V
    # split Sigma evenly so neither side dominates: (U S^1/2) · (V S^1/2) = U S V^T
    scale = np.sqrt(svd.singular_values_)
    user_vecs, item_vecs = user_vecs / scale, item_vecs * scale
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "users.npy", user_vecs.astype(np.float32))
    np.save(out / "items.npy", item_vecs.astype(np.float32))
    (out / "user_ids.json").write_text(json.dumps(users))
    (out / "item_ids.json").write_text(json.dumps(items))
    print(f"wrote {len(users)} user and {len(items)} item vectors of dim {user_vecs.shape[1]} to {out}")


if __name__ == "__main__":
    main()
