"""The forward pass on a tiny 2-layer Llama: parity, exact injection, padding, shared prefix."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from collm_demo.checkpoints import load_projector, save_projector
from collm_demo.collm import CoLLM, Projector, prompt_text
from collm_demo.errors import CheckpointError
from collm_demo.llm import load_llm
from collm_demo.packing import pack, pack_segments, plan_packed_rows, plan_prefix_batches
from conftest import HISTORIES, TARGETS, TITLES

# Every model here is a CoLLM with its default Runtime: float32 on the CPU, so parity means 1e-5.
pytestmark = pytest.mark.fp32


def prompts(model, with_cf, histories=HISTORIES, targets=TARGETS):
    return [model.builder.build(h, y, t, with_cf) for (h, y), t in zip(histories, targets)]


def plain_llm_scores(llm, model, prompt_list):
    """Reference: the plain LLM on input_ids, one prompt at a time (no padding, no embeds)."""
    out = []
    with torch.no_grad():
        for p in prompt_list:
            logits = llm.model(input_ids=torch.tensor([p.ids])).logits[0, -1]
            out.append(torch.sigmoid(logits[model.yes_id] - logits[model.no_id]))
    return torch.stack(out)


def test_parity_cf_off_equals_plain_llm(tiny):
    llm, model = tiny
    text = prompts(model, False)
    assert all(p.user_slot is None and p.item_slot is None for p in text)
    torch.testing.assert_close(model.score(text, batch_size=3), plain_llm_scores(llm, model, text),
                               atol=1e-5, rtol=0)


def test_parity_with_disabled_lora_adapter(tiny_llm_dir):
    llm = load_llm(str(tiny_llm_dir))
    reference = CoLLM(llm.model, llm.tokenizer)
    text = prompts(reference, False)
    before = reference.score(text)
    peft_model = get_peft_model(llm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    wrapped = CoLLM(peft_model, llm.tokenizer)
    assert not torch.allclose(wrapped.score(text, use_lora=True), before, atol=1e-4)  # the adapter does act
    torch.testing.assert_close(wrapped.score(text, use_lora=False), before, atol=1e-5, rtol=0)


def test_merged_lora_scoring_equals_peft_path_and_restores_the_base(tiny_llm_dir):
    """Scoring runs LoRA merged (W + ΔW); with gradients on, peft's own branch runs. Same numbers,
    the base weights are put back untouched, and a changed adapter is re-merged."""
    llm = load_llm(str(tiny_llm_dir))
    peft_model = get_peft_model(llm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model = CoLLM(peft_model, llm.tokenizer)
    text = prompts(model, False)
    bases = {n: p for n, p in peft_model.named_parameters() if "base_layer" in n}
    snapshot = {n: p.detach().clone() for n, p in bases.items()}
    merged = model.score(text, use_lora=True)  # no_grad: merged
    with model.session(True):  # gradients on: peft's path
        unmerged = torch.sigmoid(model.answer_logit(model._run(model._pack(
            [p.ids for p in text], [[] for _ in text], left=True)).last_hidden_state[:, -1])).detach()
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    after = dict((n, p) for n, p in peft_model.named_parameters() if "base_layer" in n)
    assert all(after[n] is bases[n] and torch.equal(after[n], snapshot[n]) for n in bases)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(2)
    assert not torch.allclose(model.score(text, use_lora=True), merged, atol=1e-4)  # re-merged


def test_cf_vectors_land_exactly_on_the_slots_in_a_padded_batch(tiny):
    llm, model = tiny
    cf_prompts = prompts(model, True)
    lengths = [len(p) for p in cf_prompts]
    assert len(set(lengths)) == 3  # mixed lengths: padding is exercised
    users, items = torch.randn(3, 6), torch.randn(3, 6)
    captured = {}
    hook = llm.model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(kwargs), with_kwargs=True)
    try:
        model(cf_prompts, users, items)
    finally:
        hook.remove()
    embeds, width = captured["inputs_embeds"], max(lengths)
    table = llm.model.get_input_embeddings().weight
    with torch.no_grad():
        user_tokens, item_tokens = model.projector(users), model.projector(items)
    for row, p in enumerate(cf_prompts):
        offset = width - len(p)
        user_pos, item_pos = offset + p.user_slot, offset + len(p.prefix) + p.item_slot
        torch.testing.assert_close(embeds[row, user_pos], user_tokens[row])
        torch.testing.assert_close(embeds[row, item_pos], item_tokens[row])
        for pos in range(offset, width):  # every other position holds its word embedding
            if pos not in (user_pos, item_pos):
                torch.testing.assert_close(embeds[row, pos], table[p.ids[pos - offset]])
    assert captured["position_ids"][0, width - lengths[0]] == 0  # positions start at the first real token


def test_batched_equals_one_at_a_time(tiny):
    _, model = tiny
    cf_prompts = prompts(model, True)
    users, items = torch.randn(3, 6), torch.randn(3, 6)
    batched = model.score(cf_prompts, users, items, batch_size=3)
    single = torch.cat([model.score([p], users[n:n + 1], items[n:n + 1]) for n, p in enumerate(cf_prompts)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_cf_injection_changes_scores(tiny):
    _, model = tiny
    cf_prompts = prompts(model, True)
    a = model.score(cf_prompts, torch.zeros(3, 6), torch.zeros(3, 6))
    b = model.score(cf_prompts, torch.randn(3, 6) * 5, torch.randn(3, 6) * 5)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("with_cf", [False, True])
def test_shared_prefix_scoring_matches_full_prompts(tiny, with_cf):
    _, model = tiny
    history = (["Heat", "Jaws", "Alien"], [1, 0, 1])
    targets = TITLES[:7] + ["Toy Story Heat Jaws Alien Casino"]  # mixed suffix lengths
    cand = [model.builder.build(*history, t, with_cf) for t in targets]
    assert len({len(p.suffix) for p in cand}) > 1
    user, items = torch.randn(6), torch.randn(len(cand), 6)
    full = model.score(cand, user.expand(len(cand), -1) if with_cf else None, items if with_cf else None)
    shared = model.score_candidates(cand, user if with_cf else None, items if with_cf else None, batch_size=3)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)


def test_prompt_text_marks_slots_and_matches_the_paper_wording():
    text = prompt_text(["Heat"], [1], "Jaws", True)
    assert "encoded in the feature <UserID>." in text and 'titled "Jaws" with the feature <ItemID>?' in text
    assert text.endswith('Answer with "Yes" or "No".\n#Answer:')
    plain = prompt_text(["Heat"], [0], "Jaws", False)
    assert "<UserID>" not in plain and '"Heat" (disliked)' in plain


def test_projector_round_trip_and_mismatch(tmp_path):
    projector = Projector(6, 32)
    save_projector(projector, tmp_path / "p.safetensors", "mf")
    back = load_projector(tmp_path / "p.safetensors", hidden_size=32, cf_dim=6)
    x = torch.randn(4, 6)
    torch.testing.assert_close(back(x), projector(x))
    with pytest.raises(CheckpointError, match="hidden size 32.*hidden size 576"):
        load_projector(tmp_path / "p.safetensors", hidden_size=576, cf_dim=6)
    with pytest.raises(CheckpointError, match="dim 6.*dim 66"):
        load_projector(tmp_path / "p.safetensors", hidden_size=32, cf_dim=66)


@pytest.mark.parametrize("row_tokens", [0, 9, 10_000])
@pytest.mark.parametrize("with_cf", [False, True])
def test_grouped_shared_prefix_scoring_matches_full_prompts(tiny, with_cf, row_tokens):
    """Many users at once (the evaluation's case): prefixes of different lengths, groups of
    different sizes, small batches so that groups are split across suffix chunks."""
    _, model = tiny
    histories = [(["Heat"], [1]), (["Jaws", "Alien", "Casino"], [0, 1, 1]), (["Fargo", "Brazil"], [1, 0])]
    cand, users = [], []
    user_table = torch.randn(3, 6)
    for u, (hist, labels) in enumerate(histories):
        for target in TITLES[: 2 + 2 * u]:
            cand.append(model.builder.build(hist, labels, target, with_cf))
            users.append(user_table[u])
    users = torch.stack(users)
    items = torch.randn(len(cand), 6)
    kwargs = dict(user_vecs=users if with_cf else None, item_vecs=items if with_cf else None)
    full = model.score(cand, **kwargs)
    # row_tokens: one suffix per row (0), a few per packed row (9), all of a prefix's suffixes in one row
    shared = model.score_shared(cand, prefix_batch=2, suffix_batch=3, suffix_row_tokens=row_tokens, **kwargs)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the batching plan and packing

def test_plan_groups_equal_prefixes_and_bounds_batches():
    keys = ["a", "b", "a", "c", "b", "a", "d"]
    lengths = [5, 3, 5, 9, 3, 5, 1]
    plan = plan_prefix_batches(keys, lengths, prefix_batch=2, suffix_batch=4)
    # every prompt exactly once; a group is never split across batches
    assert sorted(n for batch in plan for group in batch for n in group) == list(range(7))
    assert plan == [[[6], [1, 4]], [[0, 2, 5], [3]]]  # by prefix length: d(1) b(3) | a(5) c(9)
    for batch in plan:
        assert len(batch) <= 2
        assert len(batch) == 1 or sum(len(g) for g in batch) <= 4
    assert plan_prefix_batches([], [], 2, 4) == []


def test_packed_rows_keep_one_owner_and_fill_evenly():
    owners = [0, 0, 0, 0, 1, 1, 0]
    lengths = [4, 4, 4, 4, 20, 3, 4]
    rows = plan_packed_rows(owners, lengths, row_tokens=16)
    assert sorted(i for row in rows for i in row) == list(range(7))  # every suffix exactly once
    assert all(len({owners[i] for i in row}) == 1 for row in rows)  # a row continues one cache row
    assert all(sum(lengths[i] for i in row) <= 16 or len(row) == 1 for row in rows)
    # owner 0: 20 tokens in 5 suffixes -> two even rows (12 + 8, not 16 + 4); the 20-token suffix alone
    assert [sum(lengths[i] for i in row) for row in rows if owners[row[0]] == 0] == [12, 8]
    assert [20] in [[lengths[i] for i in row] for row in rows]
    assert plan_packed_rows(owners, lengths, row_tokens=0) == [[i] for i in (0, 1, 2, 3, 6, 4, 5)]


def test_separate_projectors_map_each_slot_with_its_own_mlp(tiny, tmp_path):
    """``Projector(separate_users=True)``: the user slot gets ``user_net``'s token, the item slot
    ``net``'s, in whole prompts and in shared-prefix scoring alike; it survives a save and load."""
    llm, shared_model = tiny
    torch.manual_seed(1)
    separate = Projector(6, llm.hidden_size, separate_users=True)
    model = CoLLM(llm.model, llm.tokenizer, separate)
    cf_prompts = prompts(model, True)
    users, items = torch.randn(3, 6), torch.randn(3, 6)
    captured = {}
    hook = llm.model.model.register_forward_pre_hook(lambda mod, args, kwargs: captured.update(kwargs), with_kwargs=True)
    try:
        whole = model(cf_prompts, users, items)
    finally:
        hook.remove()
    width = max(len(p) for p in cf_prompts)
    with torch.no_grad():
        user_tokens, item_tokens = separate.user_net(users), separate.net(items)
        assert not torch.allclose(user_tokens, separate.net(users))  # two different mappings
    for row, p in enumerate(cf_prompts):
        offset = width - len(p)
        torch.testing.assert_close(captured["inputs_embeds"][row, offset + p.user_slot], user_tokens[row])
        torch.testing.assert_close(captured["inputs_embeds"][row, offset + p.item_pos], item_tokens[row])
    with torch.no_grad():  # the shared-prefix path writes the same tokens
        torch.testing.assert_close(torch.sigmoid(whole), model.score_shared(cf_prompts, users, items), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="which rows are users"):
        separate(users)
    torch.testing.assert_close(shared_model.projector(users, True), shared_model.projector(users))  # one MLP: ignored
    save_projector(separate, tmp_path / "p.safetensors", "mf")
    loaded = load_projector(tmp_path / "p.safetensors", llm.hidden_size, 6)
    assert loaded.separate_users
    torch.testing.assert_close(loaded(users, True), separate(users, True))
    torch.testing.assert_close(loaded(items, False), separate(items, False))
    save_projector(shared_model.projector, tmp_path / "q.safetensors", "mf")
    assert not load_projector(tmp_path / "q.safetensors", llm.hidden_size, 6).separate_users


def test_packed_segments_see_the_prefix_and_themselves_only():
    past = torch.tensor([[0, 1, 1]])  # a cached prefix of 2 real tokens after one pad
    batch, rows, cols = pack_segments([[[5, 6], [7, 8, 9]]], [[[], [(1, torch.ones(3), False)]]], 0,
                                      torch.tensor([2]), past)
    assert batch.positions.tolist() == [[2, 3, 2, 3, 4]]  # each suffix starts right after the prefix
    assert (rows.tolist(), cols.tolist()) == ([0, 0], [1, 4])  # their last tokens
    assert batch.slot_cols.tolist() == [3] and batch.slot_users.tolist() == [False]
    seen = batch.attention[0, 0].int().tolist()
    assert seen[3] == [0, 1, 1, 0, 0, 1, 1, 0]  # token 8: the prefix, 7 and itself, not 5 or 6
    assert seen[1] == [0, 1, 1, 1, 1, 0, 0, 0]


def test_pack_left_and_right_padding():
    u, v = torch.ones(3), torch.full((3,), 2.0)
    left = pack([[5, 6, 7], [8]], [[(1, u, True)], [(0, v, False)]], pad_id=0, left=True)
    assert left.ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left.mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left.positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert left.slot_rows.tolist() == [0, 1] and left.slot_cols.tolist() == [1, 2]
    assert left.slot_users.tolist() == [True, False]
    assert left.last.tolist() == [2, 2]
    torch.testing.assert_close(left.cf, torch.stack([u, v]))
    right = pack([[5, 6, 7], [8]], [[], [(0, v, False)]], pad_id=0, left=False, start=torch.tensor([4, 10]))
    assert right.ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right.positions[0].tolist() == [4, 5, 6] and right.positions[1, 0] == 10
    assert right.last.tolist() == [2, 0] and right.slot_cols.tolist() == [0]
    assert pack([[1]], [[]], 0, True).cf is None


# ------------------------------------------------------------------ inspect: the teaching path

@pytest.mark.parametrize("with_cf", [False, True])
def test_inspect_score_equals_score_and_score_shared(tiny, with_cf):
    _, model = tiny
    user, items = torch.randn(6), torch.randn(3, 6)
    cand = [model.builder.build(["Heat", "Jaws"], [1, 0], t, with_cf) for t in ("Babe", "Fargo", "Toy Story")]
    kwargs = dict(user_vecs=user.expand(3, -1), item_vecs=items) if with_cf else {}
    full = model.score(cand, **kwargs)
    shared = model.score_shared(cand, **kwargs)
    for n, prompt in enumerate(cand):
        seen = model.inspect(prompt, user if with_cf else None, items[n] if with_cf else None)
        assert abs(seen.score - float(full[n])) < 1e-5 and abs(seen.score - float(shared[n])) < 1e-5
        assert abs(torch.sigmoid(torch.tensor(seen.diff)) - seen.score) < 1e-6
        assert len(seen.top) == 5 and 0 < seen.p_yes < 1 and seen.attentions is None


def test_inspect_returns_attentions_and_hidden_states(tiny):
    llm, model = tiny
    prompt = model.builder.build(["Heat"], [1], "Babe", True)
    user, item = torch.randn(6), torch.randn(6)
    plain = model.inspect(prompt, user, item)
    seen = model.inspect(prompt, user, item, attentions=True, hidden_states=True)
    layers, heads = llm.model.config.num_hidden_layers, llm.model.config.num_attention_heads
    assert len(seen.attentions) == layers and seen.attentions[0].shape == (heads, len(prompt), len(prompt))
    torch.testing.assert_close(seen.attentions[1].sum(-1), torch.ones(heads, len(prompt)))
    assert len(seen.hidden_states) == layers + 1
    with torch.no_grad():  # layer 0 holds the token embeddings with the CF tokens written in
        torch.testing.assert_close(seen.hidden_states[0][prompt.user_slot], model.projector(user))
        torch.testing.assert_close(seen.hidden_states[0][prompt.item_pos], model.projector(item))
    assert abs(seen.score - plain.score) < 1e-5  # the eager kernel gives the same answer
    assert model._base().config._attn_implementation == llm.model.config._attn_implementation


# ------------------------------------------------------------------ both modes, one history encoding

def test_the_opening_is_shared_by_both_modes_and_tokenises_as_one_piece(tiny):
    _, model = tiny
    text = model.builder.build(["Heat", "Jaws"], [1, 0], "Babe", False)
    cf = model.builder.build(["Heat", "Jaws"], [1, 0], "Babe", True)
    assert text.shared == cf.shared > 0 and text.prefix[: text.shared] == cf.prefix[: cf.shared]
    assert cf.user_slot >= cf.shared  # the user token comes after the history
    # the pieces give the same ids as the whole prefix text tokenised at once (the slot aside)
    whole = model.tokenizer.encode(prompt_text(["Heat", "Jaws"], [1, 0], "Babe", False).split(' "Babe"')[0],
                                   add_special_tokens=False)
    assert text.prefix == whole


def test_both_modes_in_one_call_equal_each_mode_alone(tiny):
    llm, model = tiny
    # histories of the length the app shows (up to 10 movies): the opening dominates the prefix
    histories = [(TITLES[:10], [1, 0] * 5), (TITLES[2:11], [0, 1, 1] * 3), (TITLES[1:9], [1, 0, 0, 1] * 2)]
    text, cf, users = [], [], []
    table = torch.randn(3, 6)
    for u, (hist, labels) in enumerate(histories):
        for target in TITLES[: 2 + 2 * u]:
            text.append(model.builder.build(hist, labels, target, False))
            cf.append(model.builder.build(hist, labels, target, True))
            users.append(table[u])
    users, items = torch.stack(users), torch.randn(len(cf), 6)
    def tokens_run(fn) -> int:
        seen = []
        hook = llm.model.model.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[:2].numel()), with_kwargs=True)
        try:
            result = fn()
        finally:
            hook.remove()
        return result, sum(seen)

    (s_text, s_cf), joint = tokens_run(lambda: model.score_modes(text, cf, users, items, prefix_batch=2,
                                                                 suffix_batch=3))
    _, alone_text = tokens_run(lambda: model.score_shared(text, prefix_batch=2, suffix_batch=3))
    _, alone_cf = tokens_run(lambda: model.score_shared(cf, users, items, prefix_batch=2, suffix_batch=3))
    torch.testing.assert_close(s_text, model.score(text), atol=1e-5, rtol=0)
    torch.testing.assert_close(s_cf, model.score(cf, users, items), atol=1e-5, rtol=0)
    # each opening ran once for both modes instead of twice: less work, padding included
    saved = sum(p.shared for p in {tuple(t.prefix[: t.shared]): t for t in text}.values())
    assert joint < alone_text + alone_cf - saved / 2, (joint, alone_text, alone_cf, saved)
