"""Two composed profiles side by side: the same candidates scored for both, and how alike the two
rankings are (rank correlations, the two user tokens' cosine, a reading generated from the numbers).

Part of the Recommend tab (its widgets are built there); plain functions tests call without a server.
At 135M the tokens carry a film's general appeal more than a user's taste, and this is where a
learner sees it (docs/experiments.md, "Two composed users side by side").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import InputError
from . import core
from .memo import memoize
from .parsing import echo, parse_cf, parse_item_ids
from .state import AppState
from .values import Profile, ProfileComparison, ProfileKind, cosine, kendall, spearman
from .views import empty_figure, shorten

# (liked genre, disliked genre) of the two preset profiles: the sci-fi fan and
# children's-film fan, each disliking the other's genre, so their histories are opposites.
COMPARE_PRESETS = (("Sci-Fi", "Children's"), ("Children's", "Sci-Fi"))
SAME_RANKING_RHO = 0.8  # above it, the two profiles rank the candidates "almost the same way"
COMPARE_TOP_K = 5


def _popular_in(state: AppState, genre: str, avoid: str | None = None, skip: set | None = None) -> list[str]:
    """Warm items of ``genre`` (and not of ``avoid``), most training interactions first."""
    items, skip = state.dataset.items, skip or set()
    pop = sorted(state.catalog.item_train.items(), key=lambda kv: -kv[1])
    return [i for i, _ in pop if genre in str(items.at[i, "genres"]).split("|") and i not in skip
            and not (avoid and avoid in str(items.at[i, "genres"]).split("|"))]


def genre_profile(state: AppState, liked: str, disliked: str, n_liked: int = 4,
                  n_disliked: int = 2) -> tuple[list[str], list[str]]:
    """A composed fan of ``liked``: its most popular films liked, the most popular of ``disliked`` disliked
    (as ``composed_example`` picks them: by genre and training popularity)."""
    return (_popular_in(state, liked, avoid=disliked)[:n_liked],
            _popular_in(state, disliked, avoid=liked)[:n_disliked])


def compare_presets(state: AppState, n_candidates: int = 20) -> dict:
    """The two preset profiles and the candidates both are scored on: the next most popular films
    of the two genres, half each, none in either history (so a taste difference can show)."""
    (a_l, a_d), (b_l, b_d) = (genre_profile(state, *g) for g in COMPARE_PRESETS)
    used = set(a_l + a_d + b_l + b_d)
    ga, gb = COMPARE_PRESETS[0][0], COMPARE_PRESETS[1][0]
    half = n_candidates // 2
    cands = _popular_in(state, ga, avoid=gb, skip=used)[:half] + _popular_in(state, gb, avoid=ga, skip=used)[:half]
    return {"a_liked": a_l, "a_disliked": a_d, "b_liked": b_l, "b_disliked": b_d, "candidates": cands,
            "a_name": f"{ga} fan", "b_name": f"{gb} fan"}


def _composed(state: AppState, liked, disliked, name: str) -> Profile:
    liked, disliked = [str(i) for i in liked or []], [str(i) for i in disliked or []]
    both = [i for i in liked if i in disliked]
    if both:
        raise InputError(f"{name}: {state.dataset.title(both[0])} is both liked and disliked; keep it in one list.")
    items = liked + disliked
    unknown = [i for i in items if i not in state.catalog.item_title]
    if unknown:
        raise InputError(f"Unknown movie id {echo(unknown[0])}")
    if not items:
        raise InputError(f"{name} has no movies yet: pick at least one liked or disliked movie.")
    limit = state.dataset.protocol.history_len
    if len(items) > limit:
        raise InputError(f"{name} has {len(items)} movies; the prompt holds at most {limit}.")
    return Profile(ProfileKind.COMPOSED, None, tuple(items), tuple([1] * len(liked) + [0] * len(disliked)))


@memoize(8)
def typical_token_cosine(state: AppState, cf_name: str, n_pairs: int = 2000) -> float:
    """Median cosine between the user tokens of two random trained users: the yardstick for
    'the two profiles' tokens are close' (a fixed seed: the same number every time)."""
    pipe = state.pipeline(cf_name)
    users = [u for u in state.catalog.users if pipe.cf.has_user(u)]
    if len(users) < 2:  # a CF model with no stored user vectors: no yardstick
        return float("nan")
    tokens = core.project(state, pipe.cf.user_vectors(users).numpy(), cf_name, users=True)
    tokens = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(users), n_pairs), rng.integers(0, len(users), n_pairs)
    keep = a != b
    return float(np.median((tokens[a[keep]] * tokens[b[keep]]).sum(axis=1)))


def comparison_sentence(rho_cf: float | None, rho_text: float, cos_tokens: float | None,
                        typical: float | None, cos_vectors: float | None = None) -> str:
    """The reading of a side-by-side comparison, generated from its numbers so it stays true."""
    if rho_cf is None or np.isnan(rho_cf):
        return (f"No CF tokens in this app (no projector), so only the text prompts differ: the two profiles' "
                f"text-only rankings correlate ρ = {rho_text:.2f}.")
    same = rho_cf >= SAME_RANKING_RHO
    if same:
        out = (f"The two profiles rank the candidates almost the same way (ρ = {rho_cf:.2f}): at this model "
               "size the CF tokens mostly carry each movie's general appeal, not the user's taste.")
    else:
        out = (f"The two profiles rank the candidates differently (ρ = {rho_cf:.2f}): here the user's "
               "history and user token do change which movies rise, not only each movie's general appeal.")
    if cos_tokens is not None and typical is not None:
        if cos_tokens >= max(typical, 0.99):
            out += f" Their two user tokens barely differ (cosine {cos_tokens:.2f})."
        elif cos_tokens < typical:
            out += (f" Their user tokens are further apart than two real users' usually are (cosine "
                    f"{cos_tokens:.2f}; {typical:.2f} typically)" + (", yet the ranking hardly moves." if same else "."))
        else:
            out += (f" Their user tokens are about as close as two real users' (cosine {cos_tokens:.2f}; "
                    f"{typical:.2f} typically).")
        if cos_vectors is not None and cos_vectors < cos_tokens - 0.2:
            out += (f" The folded-in CF vectors differ far more (cosine {cos_vectors:.2f}): the projector maps "
                    "different users to nearby tokens.")
    return out + f" Without CF tokens the two rankings correlate ρ = {rho_text:.2f}."


def _main_genre(state: AppState, profile: Profile) -> str | None:
    """The genre most of a profile's liked movies share (None when it likes nothing)."""
    genres = state.dataset.items["genres"]
    counts = pd.Series([g for i, y in zip(profile.items, profile.labels) if y for g in str(genres[i]).split("|")
                        if g], dtype=object).value_counts()
    return str(counts.index[0]) if len(counts) else None


def compare_profiles(state: AppState, a_liked, a_disliked, b_liked, b_disliked, candidates,
                     cf: str | None = None, names: tuple[str, str] = ("Profile A", "Profile B")
                     ) -> ProfileComparison:
    """Score the same candidates for two composed profiles (``core.score_both``, both modes, cached)
    and measure how differently they rank them."""
    a = _composed(state, a_liked, a_disliked, names[0])
    b = _composed(state, b_liked, b_disliked, names[1])
    items = parse_item_ids(state, list(candidates or []), "candidates", ui="candidate movie")
    if len(items) < 3:
        raise InputError("Pick at least three candidate movies: a ranking of fewer says nothing.")
    cf = parse_cf(state, cf)
    ra, rb = core.score_both(state, a, items, cf=cf), core.score_both(state, b, items, cf=cf)
    rho_text = spearman([r.score_text for r in ra.rows], [r.score_text for r in rb.rows])
    rho_cf = tau_cf = cos_vec = cos_tok = typical = pop = None
    pipe = state.pipeline(cf)
    if ra.has_cf:
        cf_a, cf_b = [r.score_cf for r in ra.rows], [r.score_cf for r in rb.rows]
        rho_cf, tau_cf = spearman(cf_a, cf_b), kendall(cf_a, cf_b)
        va, _ = core.user_vector(state, a, cf, for_tokens=True)
        vb, _ = core.user_vector(state, b, cf, for_tokens=True)
        cos_vec = cosine(va.numpy(), vb.numpy())
        tokens = core.project(state, np.stack([va.numpy(), vb.numpy()]), pipe.cf_name, users=True)
        cos_tok = cosine(tokens[0], tokens[1])
        typical = typical_token_cosine(state, pipe.cf_name)
        typical = None if np.isnan(typical) else typical
        counts = [r.n_train for r in ra.rows]
        pop = (spearman(cf_a, counts), spearman(cf_b, counts))
    rho_alone = top_alone = None
    if pipe.cf is not None:  # the CF model alone on the same films: the yardstick of a personal ranking
        alone = [pipe.score_profile_alone(p.items, p.labels, items) for p in (a, b)]
        rho_alone = spearman(*alone)
        k = min(COMPARE_TOP_K, len(items))
        top_alone = tuple(tuple(items[n] for n in np.argsort(-np.asarray(s), kind="stable")[:k]) for s in alone)
    return ProfileComparison(a=ra, b=rb, rho_cf=rho_cf, tau_cf=tau_cf, rho_text=rho_text, cos_vectors=cos_vec,
                             cos_tokens=cos_tok, typical_cos_tokens=typical, pop_rho=pop,
                             sentence=comparison_sentence(rho_cf, rho_text, cos_tok, typical, cos_vec),
                             rho_alone=rho_alone, top_alone=top_alone)


def comparison_table(comp: ProfileComparison | None, names: tuple[str, str] = ("Profile A", "Profile B"),
                     k: int = COMPARE_TOP_K) -> pd.DataFrame:
    """The two top-k lists next to each other (CoLLM's ranking, else the text-only one)."""
    columns = ["rank", names[0], names[1]]
    if comp is None:
        return pd.DataFrame(columns=columns)
    def label(r) -> str:
        # U+2011, a hyphen the table does not break a line at ("Sci-" / "Fi")
        return f"{shorten(r.title)} · {r.genres.replace('|', ', ').replace('-', chr(0x2011))}"

    ta, tb = comp.top("a", k), comp.top("b", k)
    return pd.DataFrame([[n + 1, label(x), label(y)] for n, (x, y) in enumerate(zip(ta, tb))], columns=columns)


def comparison_md(state: AppState, comp: ProfileComparison | None,
                  names: tuple[str, str] = ("Profile A", "Profile B")) -> str:
    if comp is None:
        return "Press **Compare the two profiles** to score the same candidates for both."
    k = min(COMPARE_TOP_K, len(comp.a.rows))
    same_top = len({r.item for r in comp.top("a", k)} & {r.item for r in comp.top("b", k)})
    lines = [f"**{comp.sentence}**"]
    if comp.rho_cf is not None:
        lines.append(
            f"With CF tokens: Spearman ρ = {comp.rho_cf:.2f}, Kendall τ = {comp.tau_cf:.2f} between the two "
            f"profiles' scores; {same_top} of the top {k} are the same films. Folded-in CF user vectors: cosine "
            f"{comp.cos_vectors:.2f}; the user tokens the LLM reads: cosine {comp.cos_tokens:.2f}. Each ranking "
            f"against the films' popularity (training ratings): ρ = {comp.pop_rho[0]:.2f} ({names[0]}), "
            f"{comp.pop_rho[1]:.2f} ({names[1]}).")
    if comp.rho_alone is not None and comp.top_alone is not None:
        shared = len(set(comp.top_alone[0][:k]) & set(comp.top_alone[1][:k]))
        lines.append(f"The CF model alone on the same films (each profile folded in): ρ = {comp.rho_alone:.2f}; "
                     f"{shared} of its top {k} are the same films for both."
                     + ("" if comp.rho_cf is None or comp.rho_cf != comp.rho_cf or comp.rho_alone != comp.rho_alone else
                        " The LLM with CF tokens tells the two apart less than the CF model does."
                        if comp.rho_cf > comp.rho_alone else
                        " The LLM with CF tokens tells the two apart at least as much as the CF model does."))
    tops = []
    for side, name in zip("ab", names):
        genre = _main_genre(state, (comp.a if side == "a" else comp.b).profile)
        if genre:
            n = sum(genre in r.genres.split("|") for r in comp.top(side, k))
            tops.append(f"{name}'s top {k}: {n} {genre} film{'s' if n != 1 else ''}")
    if tops:
        lines.append("; ".join(tops) + ".")
    lines.append(f"{len(comp.a.rows)} candidates, scored in {comp.a.seconds + comp.b.seconds:.1f} s "
                 "(both modes for each profile; repeats come from a cache).")
    return "\n\n".join(lines)


def comparison_figure(comp: ProfileComparison | None, names: tuple[str, str] = ("Profile A", "Profile B")
                      ) -> go.Figure:
    """Each candidate's P(Yes) for profile A against profile B: on one line = the same ranking."""
    if comp is None:
        return empty_figure("Compare two profiles first.", height=300)
    with_cf = comp.a.has_cf
    fig = go.Figure()
    for genre, colour in ((COMPARE_PRESETS[0][0], "#1c7ed6"), (COMPARE_PRESETS[1][0], "#f08c00"), (None, "#868e96")):
        part = [(x, y) for x, y in zip(comp.a.rows, comp.b.rows)
                if (genre is None and not any(g in x.genres.split("|") for g, _ in COMPARE_PRESETS))
                or (genre is not None and genre in x.genres.split("|"))]
        if not part:
            continue
        fig.add_trace(go.Scatter(
            x=[x.score(with_cf) for x, _ in part], y=[y.score(with_cf) for _, y in part], mode="markers",
            marker=dict(size=11, color=colour, line=dict(color="#fff", width=1)),
            name=f"{genre} film" if genre else "other", text=[shorten(x.title) for x, _ in part],
            hovertemplate="%{text}<br>" + f"{names[0]} %{{x:.3f}}<br>{names[1]} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(
        height=380, template="plotly_white", margin=dict(l=10, r=10, t=50, b=10),
        title=dict(text=f"P(Yes) {'with' if with_cf else 'without'} CF tokens, one point per candidate "
                        "(on a rising line = ranked alike)", font_size=14),
        xaxis_title=names[0], yaxis_title=names[1], legend=dict(orientation="h", y=-0.2, x=0))
    return fig
