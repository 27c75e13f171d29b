"""The contract between the page and its tabs.

A tab is a frozen dataclass of its components (made by its module's ``build(state)`` inside an
open ``gr.Tab``) with two methods: ``wire(page)`` attaches its own events, and
``after_scoring(page)`` says what it redraws after every scoring (a :class:`Refresh`, or None).
The page (``ui.build_demo``) builds the tabs in a loop, collects their refreshes, then wires each
tab; the Recommend tab, which scores, hands each scoring event to ``Page.refresh_after`` so that
the header and every other tab follow. Handlers stay plain functions of plain values (tests call
them without a server); a :class:`CoLLMError` they raise reaches the user as a toast through
:func:`gr_error`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CoLLMError
from .state import AppState

if TYPE_CHECKING:
    import gradio as gr


def gr_error(fn: Callable) -> Callable:
    """The one place a user-facing error (any ``CoLLMError``) becomes gr.Error (a toast; the event stops)."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CoLLMError as err:
            raise gr.Error(str(err), print_exception=False) from err
    return wrapper


@dataclass(frozen=True)
class Refresh:
    """An event step: ``fn(*inputs)`` fills ``outputs``. ``slow`` steps run after the quick ones
    when the page refreshes every tab, so the quick tabs are up to date first."""

    fn: Callable
    inputs: list
    outputs: list
    slow: bool = False

    def after(self, event: Any) -> Any:
        """Run this step when ``event`` is done; the chained event."""
        return event.then(self.fn, self.inputs, self.outputs)


@dataclass
class Page:
    """What a tab's events may use beyond its own components."""

    state: AppState
    result: gr.State  # the last ScoredResult: the Recommend tab writes it, every tab reads it
    tabs: gr.Tabs  # the page's tabs (a tab may open another one)
    header: Refresh  # the header's status lines: the first to follow a scoring
    refreshes: dict[str, Refresh] = field(default_factory=dict)  # by tab id, in the page's tab order

    def wire(self, tabs: dict[str, Tab]) -> None:
        """Collect every tab's refresh, then wire every tab (a tab's events may run another's refresh)."""
        self.refreshes = {tab_id: refresh for tab_id, tab in tabs.items()
                          if (refresh := tab.after_scoring(self)) is not None}
        for tab in tabs.values():
            tab.wire(self)

    def refresh_after(self, scored: Any) -> Any:
        """After a scoring event: the header, then each tab's refresh (the slow ones last)."""
        event = self.header.after(scored)
        for refresh in sorted(self.refreshes.values(), key=lambda r: r.slow):  # stable: tab order kept
            event = refresh.after(event)
        return event


class Tab:
    """A tab of the page (its subclasses are frozen dataclasses of their components)."""

    def after_scoring(self, page: Page) -> Refresh | None:
        """What this tab redraws after every scoring; None when nothing."""
        return None

    def wire(self, page: Page) -> None:
        """Attach this tab's own events."""


@dataclass(frozen=True)
class TabSpec:
    """One tab of the page: its title, its id (``gr.Tab(id=...)``, elem_id ``tab-<id>``) and its builder."""

    label: str
    id: str
    build: Callable[[AppState], Tab]
