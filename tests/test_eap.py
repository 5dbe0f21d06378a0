"""Edge attribution patching (rote.interp.eap): the graph, the explicit forward against the HF model, nnsight
scores against the plain-torch twin, real patching against independent interventions, EAP against
single-edge patching on trained tiny models, and a hand-built model whose circuit is known."""
from __future__ import annotations

import tempfile
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import rote
from rote.interp import eap
from rote.interp.edits import plain_hooks, read, run
from rote.interp.instances import questions
from rote.runs.model import build_model, build_tokenizer

# Spearman correlation of EAP scores with single-edge patching over all 46 edges, 64 clean training
# questions, tiny profile, seed 0, one thread: measured 0.968 (FDA) and 0.769 (THR); seeds 1 and 2
# gave 0.738 / 0.878 (FDA) and 0.503 / 0.854 (THR). The floors leave a margin below seed 0's values.
SPEARMAN_FLOOR = {"fda": 0.85, "thr": 0.6}


@lru_cache
def trained(task):
    """The trained tiny model of `task` (seed 0; trained in seconds into its own ROTE_HOME), its
    tokenizer and its data frame."""
    config = rote.make_config(task, "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROTE_HOME", tempfile.mkdtemp(prefix=f"eap-{task}-"))
        model, tok = rote.get_or_train(config, device="cpu", progress=False)
        frame = rote.load_dataset(config)
    return model, tok, frame


@lru_cache
def clean_pairs(task, n=64):
    """Pairs of the first `n` clean training questions and their corrupted inputs."""
    model, tok, frame = trained(task)
    rows = questions(frame)
    rows = rows[~rows["noisy"]].head(n)
    return eap.pair_batch(tok, rows, eap.corrupted_inputs(rows, frame, task))


def hf_metric(model, ids, pairs):
    with torch.no_grad():
        return eap.logit_difference(model(ids).logits, pairs)


def rank_correlation(a, b) -> float:
    return float(np.corrcoef(pd.Series(np.asarray(a)).rank(), pd.Series(np.asarray(b)).rank())[0, 1])


def no_edges(model):
    return torch.zeros(len(eap.graph_of(model).edges), dtype=torch.bool)


# ---- the graph ----

def test_graph_has_the_edges_of_the_definition():
    graph = eap.Graph(n_layer=3, n_head=4)
    edges = set(zip(graph.edges["upstream"], graph.edges["downstream"]))
    up, down = len(graph.upstream), len(graph.downstream)
    assert (up, down) == (1 + 3 * 5, 3 * 13 + 1)
    # embed feeds all; a head of layer l feeds MLP l and layers > l; MLP l feeds layers > l
    assert len(edges) == down + sum(4 * (13 * (2 - l) + 1 + 1) + (13 * (2 - l) + 1) for l in range(3))
    assert ("embed", "a0.h2<k>") in edges and ("embed", "logits") in edges
    assert ("a0.h1", "m0") in edges and ("a0.h1", "a0.h2<q>") not in edges and ("a1.h0", "a0.h0<v>") not in edges
    assert ("m0", "a1.h3<v>") in edges and ("m0", "m0") not in edges and ("m1", "m1") not in edges
    assert all((u, "logits") in edges for u in graph.upstream)
    assert graph.select([("m2", "logits"), ("embed", "m0")]).sum() == 2
    with pytest.raises(ValueError, match="not edges"):
        graph.select([("a1.h0", "a1.h1<q>")])


# ---- the explicit forward is the model ----

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_explicit_forward_is_the_model_and_its_nodes_sum_to_the_residual(task):
    model, _, _ = trained(task)
    pairs, graph = clean_pairs(task, 16), eap.graph_of(model)
    logits, ups, inputs = eap.explicit_forward(model, pairs.clean)
    assert torch.allclose(logits, model(pairs.clean).logits, atol=1e-5)
    bias = 0.0
    for l, block in enumerate(model.transformer.h):  # block l's output = its nodes and all before + biases
        seen = {}
        _with_hook(block, lambda m, a, out: seen.update(out=out), lambda: model(pairs.clean))
        bias = bias + block.attn.c_proj.bias
        assert torch.allclose(ups[: graph.feeding(l + 1)].sum(0) + bias, seen["out"], atol=1e-5)
    assert sum(len(x) for x in inputs) == len(graph.downstream)


# ---- nnsight against the twin ----

@pytest.mark.parametrize("task", ["fda", "thr"])
@pytest.mark.parametrize("ig_steps", [0, 3])
def test_nnsight_scores_agree_with_the_plain_twin(task, ig_steps):
    model, _, _ = trained(task)
    pairs = clean_pairs(task, 32)
    a = eap.edge_scores(model, pairs, ig_steps=ig_steps, batch_size=20)
    with plain_hooks():
        b = eap.edge_scores(model, pairs, ig_steps=ig_steps)
    assert a.shape == (len(eap.graph_of(model).edges),)
    assert a.abs().max() > 1e-4
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max()))


def test_a_wider_random_model_agrees_too():
    """Three layers of four heads (more than the tiny profile's two), random weights: the explicit
    forward is the model and the two implementations agree."""
    config = rote.make_config("fda", "tiny", n_layer=3, n_embd=64, n_head=4)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    _, _, frame = trained("fda")
    rows = questions(frame).head(12)
    pairs = eap.pair_batch(tok, rows, eap.corrupted_inputs(rows, frame, "fda"))
    assert torch.allclose(eap.explicit_forward(model, pairs.clean)[0], model(pairs.clean).logits, atol=1e-5)
    a = eap.edge_scores(model, pairs, ig_steps=2)
    with plain_hooks():
        b = eap.edge_scores(model, pairs, ig_steps=2)
    assert len(a) == len(eap.Graph(3, 4).edges) and a.abs().max() > 1e-5
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max()))


def test_one_integrated_gradient_step_is_eap_and_more_steps_differ():
    model, _, _ = trained("fda")
    pairs = clean_pairs("fda", 16)
    plain = eap.edge_scores(model, pairs)
    assert torch.allclose(eap.edge_scores(model, pairs, ig_steps=1), plain, atol=1e-6)
    assert not torch.allclose(eap.edge_scores(model, pairs, ig_steps=4), plain, atol=1e-3)


def test_scores_into_the_logits_sum_to_the_final_residual_difference_times_its_gradient():
    """Independently of both implementations: sum over u of score(u -> logits) = (x_corrupted -
    x_clean) . dM/dx at ln_f's input x, read with a plain hook on the HF model."""
    model, _, _ = trained("fda")
    pairs = clean_pairs("fda", 16)
    graph, store = eap.graph_of(model), {}
    handle = model.transformer.ln_f.register_forward_pre_hook(lambda mod, args: store.update(x=args[0]))
    try:
        with torch.no_grad():
            model(pairs.corrupt)
        corrupted = store["x"]
        with torch.enable_grad():
            metric = eap.logit_difference(model(pairs.clean).logits, pairs).sum()
            grad = torch.autograd.grad(metric, store["x"])[0]
    finally:
        handle.remove()
    expected = ((corrupted - store["x"].detach()) * grad).sum() / len(pairs)
    into_logits = torch.tensor((graph.edges["downstream"] == "logits").to_numpy())
    assert torch.allclose(eap.edge_scores(model, pairs)[into_logits].sum(), expected, rtol=1e-4)


def test_the_twin_uses_no_nnsight(monkeypatch):
    model, _, _ = trained("thr")
    pairs = clean_pairs("thr", 8)
    with plain_hooks():
        expected = eap.edge_scores(model, pairs)

    def refuse(model):
        raise AssertionError("nnsight used")
    monkeypatch.setattr("rote.interp.eap.traced", refuse)
    with plain_hooks():
        assert torch.equal(eap.edge_scores(model, pairs), expected)
    with pytest.raises(AssertionError, match="nnsight used"):
        eap.edge_scores(model, pairs)


def test_batches_average_to_the_whole():
    model, _, _ = trained("thr")
    pairs = clean_pairs("thr", 24)
    assert torch.allclose(eap.edge_scores(model, pairs, batch_size=7), eap.edge_scores(model, pairs), atol=1e-7)


# ---- real patching ----

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_patching_no_edge_is_clean_and_every_edge_is_corrupted(task):
    model, _, _ = trained(task)
    pairs = clean_pairs(task, 16)
    none = no_edges(model)
    clean, corrupted = hf_metric(model, pairs.clean, pairs), hf_metric(model, pairs.corrupt, pairs)
    assert (clean - corrupted).abs().max() > 1e-2
    assert torch.allclose(eap.patched_metric(model, pairs, none), clean, atol=1e-5)
    assert torch.allclose(eap.patched_metric(model, pairs, ~none, batch_size=5), corrupted, atol=1e-5)


def test_patching_every_edge_out_of_a_head_is_patching_the_head():
    """Against an edit of `rote.interp.edits.run` (nnsight): the head's z (its slice of c_proj's
    input) from the corrupted run."""
    model, _, _ = trained("fda")
    pairs, graph = clean_pairs("fda", 16), eap.graph_of(model)
    d_head = model.config.n_embd // model.config.n_head
    for layer, head in ((0, 1), (1, 0)):
        out = torch.tensor((graph.edges["upstream"] == f"a{layer}.h{head}").to_numpy())
        z = slice(head * d_head, (head + 1) * d_head)
        with torch.no_grad():
            corrupted = read(model, pairs.corrupt, [(layer, "head")])[0][(layer, "head")]

            def put(x):
                x = x.clone()
                x[..., z] = corrupted[..., z]
                return x
            expected = eap.logit_difference(run(model, pairs.clean, {(layer, "head"): put}), pairs)
        assert torch.allclose(eap.patched_metric(model, pairs, out), expected, atol=1e-5)


def _with_hook(module, hook, call):
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return call()
    finally:
        handle.remove()


def test_patching_every_edge_into_an_input_is_feeding_it_the_corrupted_residual():
    """Against plain hooks on the HF model: every edge into head 1's value input of layer 1 =
    that head's slice of c_attn's value output from the corrupted run; every edge into MLP 0 =
    ln_2's output from the corrupted run."""
    model, _, _ = trained("fda")
    pairs, graph = clean_pairs("fda", 16), eap.graph_of(model)
    d, H = model.config.n_embd, model.config.n_head
    block1, block0 = model.transformer.h[1], model.transformer.h[0]
    seen = {}
    _with_hook(block1.attn.c_attn, lambda m, a, out: seen.update(qkv=out), lambda: model(pairs.corrupt))
    _with_hook(block0.ln_2, lambda m, a, out: seen.update(ln2=out), lambda: model(pairs.corrupt))
    cols = slice(2 * d + (d // H), 2 * d + 2 * (d // H))  # value, head 1

    def value_of_head_1(m, a, out):
        out = out.clone()
        out[..., cols] = seen["qkv"][..., cols]
        return out
    expected = eap.logit_difference(_with_hook(block1.attn.c_attn, value_of_head_1, lambda: model(pairs.clean).logits), pairs)
    into = torch.tensor((graph.edges["downstream"] == "a1.h1<v>").to_numpy())
    assert torch.allclose(eap.patched_metric(model, pairs, into), expected, atol=1e-5)
    expected = eap.logit_difference(_with_hook(block0.ln_2, lambda m, a, out: seen["ln2"],
                                               lambda: model(pairs.clean).logits), pairs)
    into = torch.tensor((graph.edges["downstream"] == "m0").to_numpy())
    assert torch.allclose(eap.patched_metric(model, pairs, into), expected, atol=1e-5)
    assert not torch.allclose(expected, hf_metric(model, pairs.clean, pairs), atol=1e-3)


def test_faithfulness_runs_from_corrupted_to_clean():
    model, _, _ = trained("fda")
    pairs = clean_pairs("fda", 16)
    scores = eap.edge_scores(model, pairs)
    n = len(scores)
    table = eap.faithfulness(model, pairs, scores, [0, 5, n])
    assert list(table["n"]) == [0, 5, n]
    assert table["share"].iloc[0] == pytest.approx(0, abs=1e-5) and table["share"].iloc[-1] == pytest.approx(1, abs=1e-5)
    clean = hf_metric(model, pairs.clean, pairs).mean().item()
    assert table["metric"].iloc[-1] == pytest.approx(clean, abs=1e-4)


# ---- EAP against ground truth ----

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_eap_ranks_edges_like_single_edge_patching(task):
    model, _, _ = trained(task)
    pairs = clean_pairs(task)
    scores = eap.edge_scores(model, pairs)
    effects = eap.single_edge_effects(model, pairs, range(len(scores)))
    rho = rank_correlation(scores, effects)
    print(f"{task}: Spearman(EAP, single-edge patching) = {rho:.3f} over {len(scores)} edges")
    assert rho > SPEARMAN_FLOOR[task]


PLANTED = [("embed", "a0.h0<v>"), ("a0.h0", "a1.h1<v>"), ("a1.h1", "logits")]


def toy_model(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer, 2-head GPT-2 (d = 32, 8 tokens) that answers, at the last pos, the first
    token: head 0 of layer 0 attends to pos 0 (a constant query, a large key there) and copies
    the token (dims 0..7) into dims 16..23; head 1 of layer 1 attends uniformly and copies those
    into dims 24..31, the only dims the (untied) unembedding reads. Every other head and both MLPs
    keep their random initialization: small paths the metric barely depends on."""
    config = GPT2Config(vocab_size=8, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_pytorch_tanh",
                        bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    eye, tr = torch.eye(8), model.transformer
    a0, a1 = tr.h[0].attn, tr.h[1].attn
    with torch.no_grad():
        tr.wte.weight.zero_()
        tr.wte.weight[:, 0:8] = eye
        tr.wpe.weight.zero_()
        tr.wpe.weight[:8, 8:16] = eye
        for attn, head in ((a0, 0), (a1, 1)):  # the planted heads' q, k, v and W_O rows cleared
            for start in (0, 32, 64):
                attn.c_attn.weight[:, start + 16 * head: start + 16 * (head + 1)] = 0
                attn.c_attn.bias[start + 16 * head: start + 16 * (head + 1)] = 0
            attn.c_proj.weight[16 * head: 16 * (head + 1)] = 0
        a0.c_attn.bias[0] = 10.0  # query
        a0.c_attn.weight[8, 32] = 10.0  # key: large at pos 0
        a0.c_attn.weight[0:8, 64:72] = eye  # value: the token
        a0.c_proj.weight[0:8, 16:24] = eye
        a1.c_attn.weight[16:24, 80:88] = eye  # value: the copied token
        a1.c_proj.weight[16:24, 24:32] = eye
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 24:32] = eye
    return model


def toy_pairs(n: int = 32, length: int = 6, seed: int = 0) -> eap.Pairs:
    """Random sequences; the corrupted one has another first token; label and contrast: the two
    first tokens, read at the last pos."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 8, (n, length), generator=g)
    corrupt = clean.clone()
    corrupt[:, 0] = (clean[:, 0] + torch.randint(1, 8, (n,), generator=g)) % 8
    return eap.Pairs(clean, corrupt, torch.full((n, 1), length - 1), clean[:, :1], corrupt[:, :1])


def test_the_top_edges_of_a_planted_circuit_are_the_planted_ones():
    model, pairs = toy_model(), toy_pairs()
    assert (model(pairs.clean).logits[:, -1].argmax(-1) == pairs.clean[:, 0]).all()  # it does the task
    graph = eap.graph_of(model)
    planted = graph.select(PLANTED)
    # ground truth: each planted edge alone carries the whole effect, no other edge carries 1% of it
    effects = eap.single_edge_effects(model, pairs, range(len(planted)))
    none = no_edges(model)
    total = eap.patched_metric(model, pairs, ~none).mean() - eap.patched_metric(model, pairs, none).mean()
    assert total < -5  # the corrupted first token flips the answer
    assert (effects[planted] / total > 0.95).all()
    assert (effects[~planted].abs() / total < 0.01).all()
    scores = eap.edge_scores(model, pairs)
    top = eap.score_table(model, scores).head(len(PLANTED))
    assert set(zip(top["upstream"], top["downstream"])) == set(PLANTED)
    assert (scores[planted] < 0).all()  # each carries the clean answer


# ---- corrupted inputs ----

def test_thr_corruption_asks_the_same_question_about_another_subject():
    model, tok, frame = trained("thr")
    rows = questions(frame).groupby("noisy").head(20)
    corrupted = eap.corrupted_inputs(rows, frame, "thr", seed=1)
    assert corrupted.index.equals(rows.index)
    by_id = frame.set_index("id")
    for row, (_, c) in zip(rows.itertuples(), corrupted.iterrows()):
        source = by_id.loc[c["id"]]
        assert (source["r1"], source["r2"]) == (row.r1, row.r2) and source["subject"] != row.subject
        assert c["label"] == source["true"] and c["label"] not in (row.label, row.true)
    assert corrupted.equals(eap.corrupted_inputs(rows, frame, "thr", seed=1))
    assert not corrupted.equals(eap.corrupted_inputs(rows, frame, "thr", seed=2))
    pairs = eap.pair_batch(tok, rows, corrupted)
    assert pairs.label.shape == (len(rows), 1)
    assert tok.convert_ids_to_tokens(pairs.label[:, 0].tolist()) == list(rows["label"])  # noisy: the noisy label
    assert tok.convert_ids_to_tokens(pairs.contrast[:, 0].tolist()) == list(corrupted["label"])
    with pytest.raises(ValueError, match="two-hop"):
        eap.corrupted_inputs(frame[frame["kind"] == "fact"].head(3), frame, "thr")


def test_fda_corruption_is_another_pair_whose_sum_differs_at_every_digit():
    model, tok, frame = trained("fda")
    rows = questions(frame).groupby("noisy").head(20)
    corrupted = eap.corrupted_inputs(rows, frame, "fda")
    by_id = frame.set_index("id")
    for row, (_, c) in zip(rows.itertuples(), corrupted.iterrows()):
        source = by_id.loc[c["id"]]
        assert not source["noisy"] and source["split"] == "train" and c["id"] != row.id
        assert c["label"] == source["true"] and len(c["label"]) == 4
        assert all(x not in (y, z) for x, y, z in zip(c["label"], row.label, row.true))
    pairs = eap.pair_batch(tok, rows, corrupted, column="true")
    assert pairs.pos.shape == (len(rows), 4) and (pairs.pos[:, 0] == 9).all()
    assert ["".join(tok.convert_ids_to_tokens(x)) for x in pairs.label.tolist()] == list(rows["true"])
    with pytest.raises(ValueError, match="differ in length"):
        eap.pair_batch(tok, rows, corrupted.assign(label="12"))


def test_mean_patching_every_edge_feeds_every_input_the_mean_residual():
    """Every edge carrying the mean activations: the logits are the readout of the sum of the means
    (and the attention biases), the same for every row."""
    model, _, _ = trained("thr")
    pairs = clean_pairs("thr", 16)
    means = eap.upstream_means(model, pairs.clean, batch_size=5)
    logits_of_mean = model.lm_head(model.transformer.ln_f(
        means.sum(0) + sum(block.attn.c_proj.bias for block in model.transformer.h)))
    expected = eap.logit_difference(logits_of_mean.expand(len(pairs), -1, -1), pairs)
    every = ~no_edges(model)
    assert torch.allclose(eap.patched_metric(model, pairs, every, source=means), expected, atol=1e-5)
    table = eap.faithfulness(model, pairs, eap.edge_scores(model, pairs), [0, len(every)], source=means)
    assert table["metric"].iloc[0] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert table["share"].tolist() == pytest.approx([0, 1], abs=1e-5)


def test_a_precomputed_source_is_the_corrupted_run():
    model, _, _ = trained("fda")
    pairs = clean_pairs("fda", 16)
    edges = torch.arange(len(eap.graph_of(model).edges)) % 3 == 0
    source = eap.upstream_activations(model, pairs.corrupt, batch_size=6)
    expected = eap.patched_metric(model, pairs, edges, batch_size=5)
    assert torch.allclose(eap.patched_metric(model, pairs, edges, batch_size=5, source=source), expected, atol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        eap.patched_metric(model, pairs, edges, source=source[:, :3])


def test_per_row_scores_average_to_the_scores_and_each_row_is_its_own_pass():
    model, _, _ = trained("fda")
    pairs = clean_pairs("fda", 12)
    rows = eap.edge_scores(model, pairs, per_row=True, batch_size=5)
    assert rows.shape == (12, len(eap.graph_of(model).edges))
    assert torch.allclose(rows.mean(0), eap.edge_scores(model, pairs), rtol=1e-5, atol=1e-7)
    one = next(pairs.batches(1))  # the first row alone
    assert torch.allclose(rows[0], eap.edge_scores(model, one), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(rows[0], rows[1])
