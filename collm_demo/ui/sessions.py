"""Gradio's per-session store, bounded and lean (installed by ``guard``'s lifespan at start-up).

Gradio 6.31 makes a session for every new ``session_hash`` a request names (any queued event,
even one whose handler then refuses the input; a call without one gets its event id as one) and
keeps up to 10,000 of them. Each holds a copy of every component's configuration (~0.8 MB in
this app, mostly the menus' 1,682 titles three times over), which only the deep-link route reads
(``guard`` refuses that route). Here a session keeps only what the handlers use (``gr.State``
values and components a handler updated), at most ``capacity`` of them: the least recently used
goes first, together with the queue's messages for it that nobody collected.
"""

from __future__ import annotations

from gradio.state_holder import SessionState, StateHolder


class _Unkept(dict):
    """Stands in for ``SessionState.config_values``: keeps nothing."""

    def __setitem__(self, key, value) -> None:
        pass

    def __contains__(self, key) -> bool:
        return True  # "already there": Gradio then skips computing it

    def __getitem__(self, key) -> dict:
        return {}


class _WithoutComponents:
    """What ``SessionState.__init__`` reads of a Blocks, with no components to copy the
    configuration of (so Gradio's own constructor runs, minus that copy)."""

    def __init__(self, blocks) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict = {}


class LeanSession(SessionState):
    """A Gradio session without its copy of every component's configuration."""

    def __init__(self, blocks) -> None:
        super().__init__(_WithoutComponents(blocks))  # type: ignore[arg-type]
        self.config_values = _Unkept()


class SessionStore(StateHolder):
    """Gradio's session store with lean sessions, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.own_capacity = capacity

    def set_blocks(self, blocks) -> None:
        super().set_blocks(blocks)
        self.capacity = self.own_capacity  # Gradio's set_blocks takes the Blocks' 10,000

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LeanSession(self.blocks)
        return super().__getitem__(session_id)

    def update(self, session_id: str) -> None:
        # Gradio's, with every session beyond capacity dropped (not only one) and forgotten.
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            queue = getattr(self.blocks, "_queue", None)
            while len(self.session_data) > self.capacity:
                evicted, _ = self.session_data.popitem(last=False)
                self.time_last_used.pop(evicted, None)
                if queue is not None:
                    forget(queue, evicted)
            # A session dropped while one of its events was waiting or running kept its books
            # (event ids: a plain dict; messages: Gradio's LRU of 2,000 sessions). Once the queue
            # has books for twice as many sessions as the store holds, forget the unused ones.
            if queue is not None and len(queue.pending_event_ids_session) > 2 * self.capacity:
                for stale in [s for s in queue.pending_event_ids_session if s not in self.session_data]:
                    forget(queue, stale)


def forget(queue, session_id: str) -> None:
    """Drop the queue's books for a session none of whose events is waiting or running: a
    ``/call`` whose result is never fetched (its GET never comes) is kept there forever otherwise."""
    events = queue.pending_event_ids_session.get(session_id, set())
    if any(event in queue.event_ids_to_events for event in events):
        return
    queue.pending_event_ids_session.pop(session_id, None)
    queue.pending_messages_per_session.pop(session_id, None)


def install_session_store(app, capacity: int) -> SessionStore:
    """Replace the running app's session store (and its Blocks') with a :class:`SessionStore`."""
    old = app.state_holder
    store = SessionStore(capacity)
    store.set_blocks(app.get_blocks())  # also points the Blocks at it
    for session_id, session in list(old.session_data.items()):  # none yet at start-up, normally
        store.session_data[session_id] = session
    app.state_holder = store
    return store
