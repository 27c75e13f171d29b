"""torch.compile of the decoder layers, measured both ways: is its start-up cost repaid?

    python -m benchmarks.bench_compile              # ~4 minutes on 2 CPU cores

"Compare on and off" for the app's default user and 20 candidates (``CoLLM.score_modes``, as
the Score button runs it), eager, then with every decoder layer's forward compiled
(``dynamic=True``: prompt lengths vary): the first compiled call (compile + run), the
steady-state calls, and the largest score difference to eager.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from collm_demo.config import CHECKPOINT_DIR, AppConfig
from collm_demo.pipeline import load_pipeline


def main() -> None:
    from collm_demo.ui import core
    from collm_demo.ui.state import AppState

    pipe = load_pipeline(CHECKPOINT_DIR)
    state = AppState(AppConfig(checkpoint_dir=Path(CHECKPOINT_DIR)), pipeline=pipe)
    user = state.catalog.default_user()
    items = [str(i) for i in state.catalog.test_items(user)["item"]][:20]
    items += [i for i in state.catalog.item_ids if i not in items][: 20 - len(items)]
    profile = core.real_profile(state, user)
    model, title = pipe.model, pipe.dataset.title
    history = [title(i) for i in profile.items]
    text = [model.builder.build(history, profile.labels, title(c), False) for c in items]
    cf = [model.builder.build(history, profile.labels, title(c), True) for c in items]
    users, item_vecs = None, None  # the slots keep their placeholder embedding: the same work, no CF lookup

    def run() -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        started = time.perf_counter()
        scores = model.score_modes(text, cf, users, item_vecs)
        return time.perf_counter() - started, scores

    run()  # warm-up
    eager = [run() for _ in range(3)]
    reference = eager[-1][1]
    for layer in model._base().model.layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    first, scores = run()
    compiled = [run()[0] for _ in range(3)]
    diff = max((a - b).abs().max().item() for a, b in zip(scores, reference))
    best_eager, best_compiled = min(t for t, _ in eager), min(compiled)
    print(f"eager: best {best_eager:.2f} s; compiled: first call {first:.1f} s (compile + run), "
          f"then best {best_compiled:.2f} s; max |score diff| {diff:.1e}")
    saved = best_eager - best_compiled
    print((f"compile cost repaid after {(first - best_compiled) / saved:.0f} calls" if saved > 0
           else "never repaid: the compiled layers are not faster") + " (the app does not compile)")


if __name__ == "__main__":
    main()
