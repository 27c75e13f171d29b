"""What the rest of the project knows about a CF backend: one frozen value per backend.

Names, labels and colours for people; file names in a checkpoint folder; keys in the manifest
and in ``assets/results.json``. No other module spells ``cf_<name>.safetensors`` or
``collm_<name>``: they ask the backend's value (``collm_demo.cf.backend(name)``), or go the other
way with ``Backend.from_key`` (a results key) and ``Backend.from_cf_file`` (a file in a folder).

MF came first and keeps its historical keys (``collm``, stage ``cf`` / ``projector``, layout
``embedding_map.json``) so the shipped checkpoints and results stay readable; every other
backend follows the ``<thing>_<name>`` rule. Those two rules live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Methods that are not a CF backend: the LLM alone (without / with stage-1 LoRA), and MF scored
# the paper's way (users unseen in training left at the no-information vector).
LLM_METHODS = {"zero_shot": ("Zero-shot LLM", "#BE4BDB"),
               "text_only": ("Text-only LoRA (TALLRec)", "#F08C00")}
MF_NO_FOLDIN = "mf_no_foldin"
# The share of "(liked)" marks in the row's own history, used directly as a score: no model at all.
# With MF_NO_FOLDIN (item appeal alone) it is one of the two one-line baselines every LLM row must
# beat (issue 26): a text model that only counts the marks scores what this scores.
LIKE_SHARE = "like_share"
# A CoLLM row trained by another recipe than the one that ships, kept beside it in the results
# (issue 26: "the paper's exact recipe keeps its row"): "<CoLLM key>@<recipe>", e.g. "collm@paper".
# No CF name holds an '@' (``import-embeddings`` takes letters, digits, '.', '_', '-'), so such a
# key is never read as a backend.
RECIPE_MARK = "@"
RECIPE_ROW_LABELS = {"paper": "the paper's recipe"}  # after the CoLLM row's short name: "CoLLM, the paper's recipe"
RECIPE_ROW_COLOUR = "#91A7FF"


def recipe_row(collm_key: str, recipe: str) -> str:
    """The results key of ``collm_key``'s row trained by ``recipe``: "collm@paper"."""
    return f"{collm_key}{RECIPE_MARK}{recipe}"


def split_recipe_row(key: str) -> tuple[str, str] | None:
    """("collm", "paper") for "collm@paper"; None for a key of no recipe row."""
    base, mark, recipe = key.partition(RECIPE_MARK)
    return (base, recipe) if mark and base and recipe else None

# The naming rule's two patterns, read backwards by ``from_cf_file`` / ``from_key``.
_CF_PREFIX, _CF_SUFFIX = "cf_", ".safetensors"
CF_FILE_GLOB = f"{_CF_PREFIX}*{_CF_SUFFIX}"  # every backend's CF file in a checkpoint folder
_COLLM_PREFIX = "collm_"
# The ``kind`` an imported CF file records ("imported:<name>", ``cf.imported``): vectors may be
# imported under a registry name too, so the file, not only the name, tells.
IMPORTED_KIND = "imported"


@dataclass(frozen=True)
class Backend:
    name: str  # key on the command line (--cf), in file names and results: "mf", "lightgcn", ...
    short: str  # in sentences and chart legends: "MF"
    label: str  # in selectors: "MF (matrix factorisation)"
    blurb: str  # completes "The collaborative-filtering model (MF) ...": how its vectors are made
    colour: str  # CoLLM with this backend, in charts
    colour_alone: str  # the CF model alone, in charts
    vector_note: str = ""  # what the exported vectors carry beyond the taste dimensions
    # Trains the model from a Dataset (the `train --stage cf` of this backend): (dataset, cfg, log) ->
    # (train interactions used, CFModel, info). None = vectors come from `import-embeddings`.
    trainer: Callable[..., Any] | None = None
    imported: bool = False

    @property
    def legacy(self) -> bool:
        """MF's files and keys predate the naming rule and keep their old names."""
        return self.name == "mf"

    # ---- files in a checkpoint folder
    @property
    def cf_file(self) -> str:
        return f"{_CF_PREFIX}{self.name}{_CF_SUFFIX}"

    @property
    def projector_file(self) -> str:
        return f"projector_{self.name}.safetensors"

    @property
    def lora_dir(self) -> str:
        """Stage 2's own copy of the LoRA, when stage 2 trained one (``--projector-lora-lr``)."""
        return f"lora_{self.name}"

    @property
    def adapter_name(self) -> str:
        """That copy's name inside the one peft model (beside stage 1's ``default``)."""
        return f"cf_{self.name}"

    def layout_path(self, default: Path) -> Path:
        """The embedding-map layout next to ``default`` (``assets/embedding_map.json`` for MF)."""
        return default if self.legacy else default.with_name(f"{default.stem}_{self.name}{default.suffix}")

    @property
    def ceiling_file(self) -> str:
        return "fusion_ceiling.json" if self.legacy else f"fusion_ceiling_{self.name}.json"

    # ---- keys in the manifest and the results
    @property
    def cf_stage(self) -> str:
        return "cf" if self.legacy else f"cf_{self.name}"

    @property
    def projector_stage(self) -> str:
        return "projector" if self.legacy else f"projector_{self.name}"

    @property
    def alone_key(self) -> str:
        return self.name

    @property
    def collm_key(self) -> str:
        return "collm" if self.legacy else f"{_COLLM_PREFIX}{self.name}"

    @property
    def extra_methods(self) -> tuple[str, ...]:
        """Reference rows offered with the default backend (MF): the paper's handling of new users
        (item appeal alone for them) and the no-model share of liked films in the history."""
        return (MF_NO_FOLDIN, LIKE_SHARE) if self.legacy else ()

    @property
    def result_keys(self) -> tuple[str, ...]:
        """Its rows of the results in reading order: alone, the reference rows, CoLLM with it."""
        return (self.alone_key, *self.extra_methods, self.collm_key)

    @property
    def alone_label(self) -> str:
        return f"{self.short}{', imported' if self.imported else ''} (CF alone)"

    @property
    def collm_label(self) -> str:
        if self.legacy:
            return "CoLLM (LoRA + CF tokens)"
        return f"CoLLM-{self.short}" + (" (imported vectors)" if self.imported else "")

    def display_name(self, cf_kind: object = "", short: bool = False) -> str:
        """What people call this backend given the ``kind`` its CF file records: imported vectors
        (a name outside the registry, or a file of kind "imported:..." saved under a registry
        name) are "<name> (imported)"; otherwise ``short`` ("MF") or ``label`` ("MF (matrix
        factorisation)"). The one rule for the CF-model selector and the sentences of the tabs."""
        if self.imported or str(cf_kind).startswith(IMPORTED_KIND):
            return f"{self.name} (imported)"
        return self.short if short else self.label

    @property
    def cli_flag(self) -> str:
        """The ``--cf`` option a command needs for this backend ('' for the default)."""
        return "" if self.legacy else f" --cf {self.name}"

    @classmethod
    def imported_vectors(cls, name: str) -> "Backend":
        """The description of vectors brought in with ``import-embeddings`` under ``name``."""
        return cls(name=name, short=name.upper() if len(name) <= 4 else name, label=f"{name} (imported)",
                   blurb="was made outside this project and imported (one vector per user and per movie)",
                   colour="#0C8599", colour_alone="#99E9F2", imported=True)

    @classmethod
    def from_key(cls, key: str) -> "tuple[Backend, bool] | None":
        """The backend a results / method key belongs to, and whether the key is CoLLM with it (else
        the backend alone): "mf" -> (MF, False), "collm" -> (MF, True), "collm_x" -> (x, True). None
        for the rows that are no backend (the LLM alone, MF without fold-in, the like share, a
        recipe row such as "collm@paper")."""
        from . import BACKENDS, backend  # the registry, which imports this module

        if key in LLM_METHODS or key in (MF_NO_FOLDIN, LIKE_SHARE) or split_recipe_row(key):
            return None
        for known in BACKENDS.values():
            if key in (known.alone_key, known.collm_key):
                return known, key == known.collm_key
        imported = backend(key.removeprefix(_COLLM_PREFIX))
        return imported, key == imported.collm_key

    @classmethod
    def from_cf_file(cls, path: str | Path) -> "Backend | None":
        """The backend whose CF file ``path`` is (by its name: ``cf_<name>.safetensors``); None for
        any other file."""
        from . import backend

        file = Path(path).name
        if not (file.startswith(_CF_PREFIX) and file.endswith(_CF_SUFFIX)):
            return None
        return backend(file[len(_CF_PREFIX): -len(_CF_SUFFIX)])
