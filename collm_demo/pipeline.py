"""Checkpoints in, scores out: the object the CLI, the evaluation and the app share.

A :class:`Pipeline` is the dataset, the LLM (+ LoRA) wrapped in :class:`CoLLM`, and one CF
backend with its projector. ``load_pipeline`` builds it from a checkpoint folder
(``checkpoints.py`` reads and checks the files); missing checkpoints are not an error: the
pipeline then runs in the best mode it can (``text_only`` without a projector, ``zero_shot``
without LoRA) and says so in ``notice``.

Two ways in, one scorer (``_score_llm``) behind both:

* **rows** (evaluation, training's early stopping): ``score_rows`` / ``score_methods`` take
  protocol rows and method names;
* **a profile** (the app: one history, its labels, a user vector, candidates): ``score_profile``
  (both modes), ``inspect`` (one prompt, the whole answer distribution), ``look_inside`` (the
  Inside tab's analysis), ``refit_item`` / ``score_item_vectors`` (the cold-start simulator),
  ``project`` and ``prompt_tokens`` (what the views draw);
* built on both, **several real users** (the app's "Same films, different users"): ``rank_for_users``
  scores one set of candidates for each user's real history through ``score_profile``, and the CF
  model alone through ``score_rows``.

The app asks these and never the model.

Prompts are built here and only here (``prompts_for``), and the LoRA rule lives here: the text
mode runs with the LoRA when one is loaded (TALLRec's text-only model), else the plain LLM
(zero-shot); CF prompts always run with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .analysis import ablation_scores, analyse, logit_lens
from .cf import Backend, CFModel, backend
from .cf.backend import LIKE_SHARE, MF_NO_FOLDIN
from .checkpoints import (
    TRAIN_HINT,
    available_backends,
    check_lora,
    check_manifest,
    history_style,
    load_backend,
    projector_training,
    read_manifest,
)
from .collm import CoLLM, Inspection, Prompt, prompt_text
from .config import CHECKPOINT_DIR, DEFAULT_CF, ProtocolConfig
from .data import Dataset, history_like_share, load_dataset
from .device import Runtime
from .distributed import Ranks
from .errors import CheckpointError, InputError
from .llm import LoadedLLM, load_llm
from .personalization import UserRanking, UsersRanking, users_ranking

# The LLM methods and how each runs: (CF prompt?, LoRA on?). The CoLLM row's results key depends
# on the backend ("collm", "collm_<name>", ``Pipeline.collm_method``); inside the scorer it is "collm".
LLM_MODES = {"zero_shot": (False, False), "text_only": (False, True), "collm": (True, True)}


@dataclass(frozen=True)
class ProfileScores:
    """``Pipeline.score_profile``: P(Yes) per candidate, in the order given, in both modes."""

    text: list[float]  # the text-only prompt (with the LoRA when loaded, else zero-shot)
    cf: list[float] | None  # with the CF tokens; None without a projector
    text_mode: str  # "text_only" or "zero_shot": which model the text scores come from


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the "How it works" view draws it: its tokens, where its parts and slots are."""

    ids: list[int]
    pieces: list[str]  # each id decoded on its own
    prefix_len: int  # ids[:prefix_len] are shared by every candidate of the profile
    user_slot: int | None  # position of the user CF token (None with CF off)
    item_slot: int | None  # position of the item CF token


@dataclass(frozen=True)
class InsideLook:
    """``Pipeline.look_inside``: one (history, candidate) measured with CF on and off (float32)."""

    target: str  # the candidate's title
    score_cf: float
    score_text: float
    layers: int
    attention_on: torch.Tensor  # (layers, T_on) the answer position's attention, mean over heads, CF on
    attention_off: torch.Tensor  # (layers, T_off) the same, CF off
    groups_on: list[str]  # one label per position of the CF prompt (PromptBuilder.position_groups)
    groups_off: list[str]
    attribution: torch.Tensor  # (T_on,) gradient x input of logit(Yes) - logit(No), CF on
    tokens: list[str]  # the CF prompt's tokens decoded, the slots shown as <UserID> / <ItemID>
    ablation: dict[str, float]  # full, user_none, item_none, both_none, text_only
    lens_user: list[list[tuple[str, float]]]  # logit lens of the user slot, per layer (+ the input)
    lens_item: list[list[tuple[str, float]]]
    slot_tokens: torch.Tensor  # (2, hidden) the mapped user and item tokens


@dataclass
class Pipeline:
    dataset: Dataset
    llm: LoadedLLM
    model: CoLLM
    cf: CFModel | None
    manifest: dict = field(default_factory=dict)
    has_lora: bool = False
    notice: str = ""  # what is missing and how to fix it; empty when all is loaded
    cf_name: str = DEFAULT_CF  # which CF backend feeds the CF tokens (mf, lightgcn, or an imported name)
    ranks: Ranks = field(default_factory=Ranks)  # under torchrun: scoring is sharded over the processes

    @property
    def backend(self) -> Backend:
        return backend(self.cf_name)

    @property
    def cf_method(self) -> str:
        """Results key of the CF model alone: 'mf', 'lightgcn', ..."""
        return self.backend.alone_key

    @property
    def collm_method(self) -> str:
        """Results key of CoLLM with this backend: 'collm' for MF (the paper's main row), else 'collm_<name>'."""
        return self.backend.collm_key

    @property
    def has_projector(self) -> bool:
        return self.model.projector is not None and self.cf is not None

    def available_methods(self) -> list[str]:
        methods = ["zero_shot"]
        if self.cf is not None:
            methods[:0] = [self.cf_method, *self.backend.extra_methods]
        if self.has_lora:
            methods.append("text_only")
        if self.has_projector:
            methods.append(self.collm_method)
        return methods

    # ---- inputs for rows: prompts + CF vectors ------------------------------------
    def token_foldin_l2(self) -> float | None:
        """Fold-in strength for the vectors CoLLM's CF tokens are made from: the projector's own."""
        return self.model.projector.foldin_l2 if self.model.projector is not None else None

    def cf_vectors(self, rows: pd.DataFrame, for_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item CF vectors per row. ``for_tokens``: as the projector was trained on
        (its fold-in strength), else as the CF model scores alone (the model's own strength)."""
        users = self.cf.row_user_vectors(rows["user"].tolist(), rows["history_items"].tolist(),
                                         rows["history_labels"].tolist(),
                                         l2=self.token_foldin_l2() if for_tokens else None)
        return users, self.cf.item_vectors(rows["item"].tolist())

    def cf_scores_without_foldin(self, rows: pd.DataFrame) -> torch.Tensor:
        """The CF model alone, users unseen in training left at the no-information vector."""
        users = self.cf.user_vectors(rows["user"].tolist())
        return self.cf.score_vectors(users, self.cf.item_vectors(rows["item"].tolist()))

    # ---- prompts and the one LLM scorer ---------------------------------------------
    def prompts_for(self, histories: Sequence[Sequence[str]], labels: Sequence[Sequence[int]],
                    items: Sequence[str], with_cf: bool) -> list[Prompt]:
        """The prompts of (history, labels, candidate) triples: the one place prompts are built."""
        title, build = self.dataset.title, self.model.builder.build
        return [build([title(i) for i in hist], list(lab), title(item), with_cf)
                for hist, lab, item in zip(histories, labels, items)]

    def prompt_text(self, history: Sequence[str], labels: Sequence[int], item: str, with_cf: bool) -> str:
        """A profile's prompt for ``item`` as text, as this folder's prompts show it (the slots as
        <UserID> / <ItemID>; for display)."""
        title = self.dataset.title
        return prompt_text([title(i) for i in history], list(labels), title(item), with_cf, self.history_style)

    def prompts(self, rows: pd.DataFrame, with_cf: bool) -> list[Prompt]:
        return self.prompts_for(*self.prompt_histories(rows), rows["item"].tolist(), with_cf)

    @property
    def history_style(self) -> str:
        """How the prompts show a history (config.HISTORY_STYLES), as the folder's LoRA was trained."""
        return self.model.builder.history_style

    def prompt_histories(self, rows: pd.DataFrame) -> tuple[list, list]:
        """(items, labels) of the history each row's prompt shows: the row's last ten interactions,
        or with the paper's style its last <= 10 liked films from the whole past (``liked_items``;
        rows made for a profile have none, and the builder keeps the liked films of theirs)."""
        if self.history_style == "liked" and "liked_items" in rows:
            liked = rows["liked_items"].tolist()
            return liked, [(1,) * len(h) for h in liked]
        return rows["history_items"].tolist(), rows["history_labels"].tolist()

    @property
    def text_mode(self) -> str:
        """The text-only model: with the LoRA when one is loaded (TALLRec), else the plain LLM."""
        return "text_only" if self.has_lora else "zero_shot"

    def _score_llm(self, histories: Sequence[Sequence[str]], labels: Sequence[Sequence[int]], items: Sequence[str],
                   modes: Sequence[str], users: torch.Tensor | None = None, item_vecs: torch.Tensor | None = None,
                   progress=None) -> dict[str, torch.Tensor]:
        """P(Yes) of each (history, candidate) under each of ``modes`` (keys of ``LLM_MODES``). The
        CF mode takes ``users`` / ``item_vecs`` (token vectors). "text_only" and "collm" together
        run in one pass that encodes each history once for both (``CoLLM.score_modes``); under
        torchrun each process scores its share and the shares are summed back, exactly."""
        shard, merge, out = self.ranks.shard(), self.ranks.merge, {}

        def prompts(with_cf: bool) -> list[Prompt]:
            return self.prompts_for(histories, labels, items, with_cf)

        if "text_only" in modes and "collm" in modes:
            scores = self.model.score_modes(prompts(False), prompts(True), users, item_vecs, progress=progress,
                                            shard=shard)
            out = {"text_only": merge(scores[0]), "collm": merge(scores[1])}
        for mode in (m for m in modes if m not in out):
            with_cf, lora = LLM_MODES[mode]
            vectors = (users, item_vecs) if with_cf else (None, None)
            out[mode] = merge(self.model.score_shared(prompts(with_cf), *vectors, use_lora=lora, progress=progress,
                                                      shard=shard))
        return out

    def _rows_llm(self, rows: pd.DataFrame, modes: Sequence[str], progress=None) -> dict[str, torch.Tensor]:
        users = items = None
        if "collm" in modes:
            users, items = self.cf_vectors(rows, for_tokens=True)
        # Rows of one user with the same history share their prompt prefix: score_shared
        # encodes each distinct prefix once (about half as many as rows on ML-100K's test split).
        return self._score_llm(*self.prompt_histories(rows), rows["item"].tolist(), modes, users, items, progress)

    def joint_methods(self, methods: Sequence[str]) -> tuple[str, ...]:
        """Methods that can be scored in one call: text-only and CoLLM share the LoRA and the history."""
        pair = ("text_only", self.collm_method)
        return pair if self.has_lora and self.has_projector and all(m in methods for m in pair) else ()

    def score_methods(self, rows: pd.DataFrame, methods: Sequence[str], progress=None) -> dict[str, torch.Tensor]:
        """Scores of several methods on the same rows; the pair of ``joint_methods`` in one pass
        that encodes each user's history once for both (``CoLLM.score_modes``)."""
        out = {}
        if self.joint_methods(methods):
            joint = self._rows_llm(rows, ("text_only", "collm"), progress)
            out = {"text_only": joint["text_only"], self.collm_method: joint["collm"]}
        return out | {m: self.score_rows(rows, m, progress) for m in methods if m not in out}

    def score_rows(self, rows: pd.DataFrame, method: str, progress=None) -> torch.Tensor:
        """Scores in [0, 1] for protocol rows under one of ``available_methods()``."""
        if method not in self.available_methods():
            raise InputError(f"method {method!r} is not available here (available: "
                             f"{', '.join(self.available_methods())}){'; ' + self.notice if self.notice else ''}")
        if method == self.cf_method:
            users, items = self.cf_vectors(rows)
            return self.cf.score_vectors(users, items)
        if method == MF_NO_FOLDIN:
            return self.cf_scores_without_foldin(rows)
        if method == LIKE_SHARE:
            return torch.from_numpy(history_like_share(rows))
        mode = "collm" if method == self.collm_method else method
        return self._rows_llm(rows, (mode,), progress)[mode]

    def score_cf_rows(self, rows: pd.DataFrame, user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """CoLLM's scores of protocol rows with the CF slots holding the given vectors (ablations:
        e.g. every user token at the no-information vector)."""
        return self._score_llm(*self.prompt_histories(rows), rows["item"].tolist(), ["collm"], user_vecs,
                               item_vecs)["collm"]

    # ---- a profile: what the app asks -------------------------------------------------
    def user_token_vector(self, user: str | None, history: Sequence[str], labels: Sequence[int],
                          for_tokens: bool = True) -> torch.Tensor:
        """A profile's CF vector: a user's trained vector when the CF model has one (and does not
        encode histories), else the history's fold-in (or encoding). ``for_tokens``: at the
        projector's fold-in strength, else the CF model's own."""
        cf = self.cf
        if user is not None and cf.has_user(user) and not cf.encodes_history:
            return cf.user_vectors([user])[0]
        l2 = self.token_foldin_l2() if for_tokens else None
        return cf.history_user_vector(list(history), list(labels), l2=l2 if l2 is not None else cf.foldin_l2)

    def score_profile(self, history: Sequence[str], labels: Sequence[int], candidates: Sequence[str],
                      user_vec: torch.Tensor | None = None) -> ProfileScores:
        """One history (a user's, edited or composed) and K candidates, in both modes: the text-only
        prompt and, with a projector and ``user_vec`` (the profile's token vector), the CF prompt.
        Both modes on one LoRA run in one pass that encodes the history once."""
        modes = [self.text_mode] + (["collm"] if self.has_projector and user_vec is not None else [])
        k = len(candidates)
        users = None if "collm" not in modes else user_vec.view(1, -1).expand(k, -1)
        items = None if "collm" not in modes else self.cf.item_vectors(list(candidates))
        out = self._score_llm([list(history)] * k, [list(labels)] * k, list(candidates), modes, users, items)
        return ProfileScores(text=out[self.text_mode].tolist(),
                             cf=out["collm"].tolist() if "collm" in out else None, text_mode=self.text_mode)

    def score_profile_alone(self, history: Sequence[str], labels: Sequence[int], candidates: Sequence[str]) -> list[float]:
        """The CF model alone on a composed history's candidates, as the evaluation scores a user it
        was not trained on: the history folded in (or encoded) at the CF model's own strength."""
        if self.cf is None:
            raise InputError("no CF model is loaded")
        k = len(candidates)
        # "" is no user id, so never a trained user's: the history is folded in
        rows = pd.DataFrame({"user": [""] * k, "item": list(candidates), "history_items": [tuple(history)] * k,
                             "history_labels": [tuple(int(y) for y in labels)] * k})
        return self.score_rows(rows, self.cf_method).tolist()

    # ---- several real users, the same candidates ---------------------------------------
    def real_user(self, user: int | str) -> tuple[str, list[str], list[int]]:
        """A real user as the app prompts them: their id, and the items and labels of their history
        (``Dataset.real_history``: the latest <= 10 interactions before the test period)."""
        user = str(user)
        hist = self.dataset.real_history(user)
        if not len(hist):
            known = bool((self.dataset.interactions["user"] == user).any())
            raise InputError(f"user {user} has no interactions before the test period, so there is no history to "
                             "put in the prompt" if known else f"unknown user {user}")
        return user, [str(i) for i in hist["item"]], [int(y) for y in hist["label"]]

    def rank_for_users(self, users: Sequence[int | str], candidates: Sequence[str], top_k: int = 5,
                       progress: Callable[[float, str], None] | None = None) -> UsersRanking:
        """The same candidates ranked for each of ``users`` (real users, each with the history and CF
        vector the app gives them): P(Yes) from the text-only prompt and with the CF tokens (one
        ``score_profile`` pass per user), and the CF model's own probability beside them (its
        ``score_rows``, as the evaluation scores it). With each method's agreement across the users:
        mean pairwise Spearman ρ and mean top-``top_k`` overlap (``personalization.agreement``).
        ``progress(share done, what)`` is called before each user."""
        candidates = [str(c) for c in candidates]
        unknown = [c for c in candidates if c not in self.dataset.items.index]
        if not candidates or unknown:
            raise InputError(f"unknown candidate item(s) {', '.join(unknown[:5])}" if unknown else "no candidates")
        ranked = []
        for n, user in enumerate(users):
            if progress:
                progress(n / len(users), f"user {user}: scoring with and without the CF tokens")
            ranked.append(self._rank_for_user(user, candidates))
        return users_ranking(candidates, ranked, self.text_mode, self.cf_name if self.cf is not None else None, top_k)

    def _rank_for_user(self, user: int | str, candidates: list[str]) -> UserRanking:
        user, items, labels = self.real_user(user)
        token_vec = self.user_token_vector(user, items, labels) if self.has_projector else None
        scores = self.score_profile(items, labels, candidates, token_vec)
        alone, k = None, len(candidates)
        if self.cf is not None:  # the evaluation's rows: the trained vector, else the history folded in
            rows = pd.DataFrame({"user": [user] * k, "item": candidates, "history_items": [tuple(items)] * k,
                                 "history_labels": [tuple(labels)] * k})
            alone = tuple(self.score_rows(rows, self.cf_method).tolist())
        return UserRanking(user=user, history=tuple(items), labels=tuple(labels),
                           trained_vector=bool(self.cf is not None and self.cf.has_user(user)
                                               and not self.cf.encodes_history),
                           text=tuple(scores.text), cf=None if scores.cf is None else tuple(scores.cf), alone=alone)

    def inspect(self, history: Sequence[str], labels: Sequence[int], item: str, with_cf: bool,
                user_vec: torch.Tensor | None = None) -> Inspection:
        """One prompt through the scoring path and head, keeping the whole answer distribution."""
        prompt = self.prompts_for([history], [labels], [item], with_cf)[0]
        if not with_cf:
            return self.model.inspect(prompt, use_lora=self.has_lora)
        return self.model.inspect(prompt, user_vec, self.cf.item_vectors([item])[0], use_lora=True)

    def prompt_tokens(self, history: Sequence[str], labels: Sequence[int], item: str, with_cf: bool) -> PromptTokens:
        prompt = self.prompts_for([history], [labels], [item], with_cf)[0]
        decode = self.model.tokenizer.decode
        return PromptTokens(ids=prompt.ids, pieces=[decode([t]) for t in prompt.ids], prefix_len=len(prompt.prefix),
                            user_slot=prompt.user_slot, item_slot=prompt.item_pos)

    @torch.no_grad()
    def project(self, vectors, users: bool | Sequence[bool]) -> torch.Tensor:
        """CF vectors (N, d) -> the mapped tokens (N, hidden) that overwrite the slots, float32 on the CPU.
        ``users``: whether the vectors are users' (one bool, or one per row): a projector may map
        users and items separately (``Projector.separate_users``)."""
        projector = self.model.projector
        vectors = torch.atleast_2d(torch.as_tensor(vectors, dtype=torch.float32)).to(self.model.device)
        return projector(vectors, users if isinstance(users, bool) else torch.as_tensor(users, dtype=torch.bool)
                         ).float().cpu()

    @property
    def projector_shape(self) -> tuple[int, int, int] | None:
        """(CF dim, hidden width, output width) of the projector's two layers, or None."""
        proj = self.model.projector
        return None if proj is None else (proj.cf_dim, proj.expand * proj.cf_dim, proj.hidden_size)

    @property
    def projector_training(self) -> str:
        """How the loaded projector was trained, in words, from its manifest record ('' if none)."""
        if self.model.projector is None:
            return ""
        stages = self.manifest.get("stages") if isinstance(self.manifest.get("stages"), dict) else {}
        record = stages.get(backend(self.cf_name).projector_stage)
        return projector_training(record if isinstance(record, dict) else None)

    @property
    def separate_user_projector(self) -> bool:
        """Whether users are mapped by a projector MLP of their own (``Projector.separate_users``)."""
        return self.model.projector is not None and self.model.projector.separate_users

    @property
    def runtime(self) -> Runtime:
        return self.model.runtime

    def word_embeddings(self) -> torch.Tensor:
        """The LLM's input embedding table (vocab, hidden), float32 on the CPU."""
        return self.model.llm.get_input_embeddings().weight.detach().float().cpu()

    def refit_item(self, users: Sequence[str], labels: Sequence[int]) -> torch.Tensor:
        """An item's CF vector fitted to these (user, label) interactions alone (the cold-start
        simulator's "keep k interactions"), against the frozen user vectors."""
        return self.cf.fold_in_item(list(users), list(labels))

    def score_item_vectors(self, history: Sequence[str], labels: Sequence[int], item: str, user_vec: torch.Tensor,
                           item_vecs: torch.Tensor) -> tuple[list[float], float]:
        """One candidate scored with each of several item vectors (CF prompt), and its text-only
        score, which no item vector can move."""
        n = len(item_vecs)
        users = user_vec.view(1, -1).expand(n, -1)
        cf = self._score_llm([list(history)] * n, [list(labels)] * n, [item] * n, ["collm"], users, item_vecs)
        text = self._score_llm([list(history)], [list(labels)], [item], [self.text_mode])
        return cf["collm"].tolist(), float(text[self.text_mode][0])

    def look_inside(self, history: Sequence[str], labels: Sequence[int], item: str, user_vec: torch.Tensor,
                    top_k: int = 5) -> InsideLook:
        """The Inside tab's measurements for one (history, candidate): attention with CF on and off,
        gradient x input, the four ablations, the logit lens of both slots (``analysis.py``)."""
        model = self.model
        cf_prompt, text_prompt = (self.prompts_for([history], [labels], [item], cf)[0] for cf in (True, False))
        target = self.dataset.title(item)
        item_vec = self.cf.item_vectors([item])[0]
        users, items = user_vec.view(1, -1), item_vec.view(1, -1)
        on = analyse(model, [cf_prompt], users, items)
        off = analyse(model, [text_prompt], use_lora=self.has_lora, attribution=False)
        ablation = {k: float(v[0]) for k, v in ablation_scores(model, [cf_prompt], users, items,
                                                                self.cf.default_user, self.cf.default_item).items()}
        ablation["text_only"] = float(torch.sigmoid(off.diff[0]))
        states = model.inspect(cf_prompt, user_vec, item_vec, hidden_states=True).hidden_states
        tokens = [model.tokenizer.decode([t]) for t in cf_prompt.ids]
        tokens[cf_prompt.user_slot], tokens[cf_prompt.item_pos] = "<UserID>", "<ItemID>"
        return InsideLook(
            target=target, score_cf=float(torch.sigmoid(on.diff[0])), score_text=ablation["text_only"],
            layers=int(on.attention[0].shape[0]), attention_on=on.attention[0], attention_off=off.attention[0],
            groups_on=model.builder.position_groups(cf_prompt, target),
            groups_off=model.builder.position_groups(text_prompt, target),
            attribution=on.attribution[0], tokens=tokens, ablation=ablation,
            lens_user=logit_lens(model, states, cf_prompt.user_slot, top_k),
            lens_item=logit_lens(model, states, cf_prompt.item_pos, top_k),
            slot_tokens=self.project(torch.stack([user_vec, item_vec]), [True, False]))


def with_backend(base: Pipeline, checkpoint_dir: str | Path, cf_name: str) -> Pipeline:
    """The same LLM, LoRA and data with another CF backend and its own projector.

    Nothing of the LLM is copied: the new pipeline's CoLLM wraps the very same (frozen) modules
    and shares their lock, which is CoLLM's decoupling: swapping the CF model swaps two small files.
    """
    if cf_name == base.cf_name:
        return base
    cf, projector, notes = load_backend(Path(checkpoint_dir), cf_name, base.llm, base.manifest)
    if notes:
        raise CheckpointError(f"CF backend {cf_name!r} is not trained in {checkpoint_dir}: {', '.join(notes)}; "
                              f"available: {', '.join(available_backends(checkpoint_dir)) or 'none'}")
    if projector is not None:
        projector.to(base.model.device)
    cf_adapter = None
    if base.has_lora and projector is not None:
        with base.model.lock:  # adding an adapter to the shared peft model
            cf_adapter = load_cf_adapter(base.model.llm, Path(checkpoint_dir), cf_name)
    style = prompt_style(base.manifest, base.has_lora, backend(cf_name).projector_stage if projector is not None else None)
    model = CoLLM(base.model.llm, base.model.tokenizer, projector, runtime=base.model.runtime, lock=base.model.lock,
                  cf_adapter=cf_adapter, history_style=style)
    notice = "" if base.has_lora else base.notice  # the base's note may be about its own CF files
    return Pipeline(base.dataset, base.llm, model, cf, base.manifest, base.has_lora, notice, cf_name, base.ranks)


def load_cf_adapter(peft_model, checkpoint_dir: Path, cf_name: str) -> str | None:
    """Stage 2's own LoRA for ``cf_name`` (``lora_<cf>/``, written when stage 2 trained the LoRA
    with the projector), added to the peft model beside stage 1's; its name, or None if the folder
    has none (the paper's recipe: CF prompts run with the stage-1 LoRA)."""
    spec = backend(cf_name)
    folder = Path(checkpoint_dir) / spec.lora_dir
    if not (folder / "adapter_model.safetensors").exists():
        return None
    if spec.adapter_name in peft_model.peft_config:
        return spec.adapter_name
    from safetensors import SafetensorError

    check_lora(folder)
    try:
        peft_model.load_adapter(str(folder), adapter_name=spec.adapter_name, is_trainable=False)
    except (SafetensorError, ValueError, RuntimeError, TypeError, KeyError, OSError) as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[:2] if line.strip())[:300]
        raise CheckpointError(f"{folder}: the LoRA adapter does not fit this LLM ({type(err).__name__}: {detail})") from None
    peft_model.set_adapter("default")
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(False)
    return spec.adapter_name


def check_protocol(manifest: dict, dataset: Dataset) -> None:
    """Checkpoints trained under one protocol are not scored under another (their rows differ)."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    recorded = (data.get("protocol") or {}).get("name", "global") if isinstance(data.get("protocol"), dict) else "global"
    if data and recorded != dataset.protocol.name:
        raise CheckpointError(f"the checkpoints were trained under protocol {recorded!r}, the data is loaded "
                              f"under {dataset.protocol.name!r}: pass --protocol {recorded}")


# What the manifest's data record is compared on: the counts are a deterministic function of the
# data and the protocol, so another data set (or an edited one) almost surely differs in one of them.
DATA_FINGERPRINT = ("interactions", "users", "items", "splits")


def _describe_counts(counts: dict) -> str:
    return ", ".join(f"{counts.get(key, '?')} {key}" for key in ("interactions", "users", "items"))


def check_data(manifest: dict, dataset: Dataset) -> None:
    """Checkpoints trained on one data set are not scored on another: the CF model's ids, the
    projector and the LoRA belong to the data in the manifest's record (shipped checkpoints on
    other MovieLens data scored AUC 0.40, with no warning). A copy of the same data, under any
    folder name, has the same counts and passes."""
    data = manifest.get("data")
    recorded = data.get("counts") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return  # nothing recorded (imported vectors only, an old folder): nothing to compare
    here = json.loads(json.dumps(dataset.counts))  # the manifest's JSON types (lists, not tuples)
    differ = [key for key in DATA_FINGERPRINT if key in recorded and recorded[key] != here.get(key)]
    if differ:
        what = (f"{_describe_counts(recorded)} vs {_describe_counts(here)}"
                if set(differ) - {"splits"} else "the same totals but different splits")
        raise CheckpointError(f"the checkpoints were trained on other data: {str(data.get('name'))[:80]!r}, not "
                              f"{dataset.name!r} ({what}), so their scores here mean nothing; train checkpoints "
                              "on this data, or pass --other-data to evaluate them on it anyway")


def runtime_for(runtime: Runtime | None, bf16: bool | None) -> Runtime:
    """``runtime`` as given; else the CPU in the precision ``bf16`` names; else what ``auto`` picks."""
    if runtime is not None:
        return runtime
    if bf16 is not None:
        return Runtime(torch.device("cpu"), "bf16" if bf16 else "fp32", "asked for by the caller")
    return Runtime.choose()


def zero_shot(llm: LoadedLLM, dataset: Dataset, bf16: bool | None = None, notice: str = "",
              runtime: Runtime | None = None) -> Pipeline:
    """The plain LLM and no checkpoint at all (the app's fallback when checkpoints are refused)."""
    runtime = runtime_for(runtime, bf16)
    llm.model.to(runtime.device)
    return Pipeline(dataset, llm, CoLLM(llm.model, llm.tokenizer, None, runtime=runtime), None, {}, False, notice)


def prompt_style(manifest: dict, has_lora: bool, projector_stage: str | None) -> str:
    """The history style a folder's prompts are built in: the one its LoRA was trained on (a
    projector stage of another style refused, ``checkpoints.history_style``); without a LoRA the
    plain LLM reads the default's."""
    return history_style(manifest, projector_stage) if has_lora else "marked"


def load_pipeline(checkpoint_dir: str | Path = CHECKPOINT_DIR, llm_name: str | None = None,
                  data_path: str | None = None, cf_name: str = DEFAULT_CF, bf16: bool | None = None,
                  dataset: Dataset | None = None, llm: LoadedLLM | None = None,
                  with_lora: bool = True, runtime: Runtime | None = None, ranks: Ranks | None = None,
                  protocol: ProtocolConfig | None = None, allow_other_data: bool = True,
                  replaces_projector: bool = False) -> Pipeline:
    """Everything the app and evaluation need, on ``runtime``'s device and precision (see
    ``runtime_for``). ``with_lora=False`` leaves a saved adapter unloaded: stage 1 re-trained in
    a folder that already holds one must start from the plain LLM, not stack a second adapter.

    The LLM is ``llm``, else ``llm_name`` (``--llm`` / ``COLLM_LLM``), else the embedded default:
    never a path read from the checkpoint folder, whose manifest is only checked against it.
    ``allow_other_data=False`` (evaluation, the app) refuses checkpoints whose manifest records
    other data than ``dataset`` (``check_data``); training, which rewrites that record, allows it.
    ``replaces_projector`` (stage 2): the folder's projector is about to be replaced, so it is not
    refused for having been trained on another history style than the LoRA."""
    runtime = runtime_for(runtime, bf16)
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint_dir} is a file, not a folder")
    dataset = dataset or load_dataset(data_path, protocol)  # first: a bad data path fails in seconds
    manifest = read_manifest(checkpoint_dir)
    check_protocol(manifest, dataset)
    if not allow_other_data:
        check_data(manifest, dataset)
    loads_llm = llm is None  # a caller that brings its own LLM (training) is replacing what the folder holds
    llm = llm or load_llm(llm_name)
    check_manifest(manifest, llm, None, cf_name, check_name=loads_llm)  # LLM mismatch: refuse before any weight
    cf, projector, notes = load_backend(checkpoint_dir, cf_name, llm, manifest)
    llm.model.to(runtime.device)
    if projector is not None:
        projector.to(runtime.device)
    model_llm = llm.model
    lora_dir = checkpoint_dir / "lora"
    has_lora = with_lora and (lora_dir / "adapter_model.safetensors").exists()
    if has_lora:
        from peft import PeftModel  # peft is heavy: only where an adapter exists
        from safetensors import SafetensorError

        check_lora(lora_dir)  # a bad config or file is named here; PEFT's own errors name neither
        try:
            model_llm = PeftModel.from_pretrained(llm.model, str(lora_dir), is_trainable=False)
        except (SafetensorError, ValueError, RuntimeError, TypeError, KeyError, OSError) as err:
            # e.g. target modules this LLM lacks, or tensors of another shape
            detail = "; ".join(line.strip() for line in str(err).splitlines()[:2] if line.strip())[:300]
            raise CheckpointError(f"{lora_dir}: the LoRA adapter does not fit this LLM "
                                  f"({type(err).__name__}: {detail})") from None
        model_llm.eval()
    elif with_lora:  # a deliberate skip (stage 1 retraining) is not a missing file
        notes.insert(1 if cf is None else 0, "no LoRA adapter (lora/)")
    cf_adapter = load_cf_adapter(model_llm, checkpoint_dir, cf_name) if has_lora and projector is not None else None
    checked = projector is not None and not replaces_projector
    style = prompt_style(manifest, has_lora, backend(cf_name).projector_stage if checked else None)
    model = CoLLM(model_llm, llm.tokenizer, projector, runtime=runtime, cf_adapter=cf_adapter, history_style=style)
    notice = ""
    if notes:
        mode = "CoLLM" if projector is not None else ("text-only" if has_lora else "zero-shot")
        notice = (f"Running in {mode} mode: {', '.join(notes)} in {checkpoint_dir}; {TRAIN_HINT}.")
    return Pipeline(dataset, llm, model, cf, manifest, has_lora, notice, cf_name, ranks or Ranks())
