import pytest
import torch

from seq2seq.core.attention import Attn
from seq2seq.errors import Seq2SeqError


def test_original_course_example_runs_unchanged():
    attn = Attn(32, 32, 32, 64, 64)
    out, weights = attn(torch.randn(1, 1, 32), torch.randn(1, 1, 32), torch.randn(1, 32, 64))
    assert out.shape == (1, 1, 64)
    assert weights.shape == (1, 32)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1))


def make(rule: str) -> Attn:
    torch.manual_seed(0)
    return Attn(16, 12 if rule != "concat" else 8, 10, 12, 20, rule=rule, attention_size=24)


def inputs(rule: str, batch=3, steps=4, positions=6):
    queries = torch.randn(batch, steps, 16)
    keys = torch.randn(batch, steps, 8) if rule == "concat" else torch.randn(batch, positions, 12)
    values = torch.randn(batch, positions, 12)
    return queries, keys, values


@pytest.mark.parametrize("rule", ["concat", "additive", "dot"])
def test_shapes_normalisation_and_masking(rule):
    attn = make(rule)
    queries, keys, values = inputs(rule)
    lengths = torch.tensor([6, 4, 1])
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (B, S)
    output, weights = attn.attend(queries, attn.project_keys(keys), values, mask)
    assert output.shape == (3, 4, 20)
    assert weights.shape == (3, 4, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    assert torch.all(weights[~mask.unsqueeze(1).expand_as(weights)] == 0)
    assert torch.all(weights[2, :, 0] == 1)  # one real position takes all the weight


@pytest.mark.parametrize("rule", ["additive", "dot"])
def test_padding_does_not_change_the_output(rule):
    attn = make(rule)
    queries, keys, values = inputs(rule, batch=1, positions=4)
    alone, _ = attn.attend(queries, attn.project_keys(keys), values)
    padded_keys = torch.cat((keys, torch.randn(1, 3, keys.size(-1))), dim=1)
    padded_values = torch.cat((values, torch.randn(1, 3, 12)), dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    padded, _ = attn.attend(queries, attn.project_keys(padded_keys), padded_values, mask)
    torch.testing.assert_close(alone, padded)


@pytest.mark.parametrize("rule", ["concat", "additive", "dot"])
def test_course_layout_matches_batched_attend(rule):
    attn = make(rule)
    queries, keys, values = inputs(rule, steps=1)
    course_keys = keys.transpose(0, 1) if rule == "concat" else keys
    out, weights = attn(queries.transpose(0, 1), course_keys, values)
    batched, batched_weights = attn.attend(queries, attn.project_keys(keys), values)
    torch.testing.assert_close(out, batched.transpose(0, 1))
    torch.testing.assert_close(weights, batched_weights.squeeze(1))


def course_weights(
    attn: Attn, query: torch.Tensor, keys: torch.Tensor, positions: int
) -> torch.Tensor:
    """The course's three rules for one query (q,) over `positions` values, written out, to
    (S,); keys (S, k), or for concat the query's one key (1, k)."""
    if attn.rule == "concat":  # softmax(Linear([Q; K])): one key, one score per position
        return torch.softmax(attn.attn(torch.cat((query, keys[0])))[:positions], dim=-1)
    if attn.rule == "additive":  # softmax(v · tanh(Linear([Q; K_j]))), one linear layer split
        weight = torch.cat((attn.query_proj.weight, attn.key_proj.weight), dim=1)
        hidden = [weight @ torch.cat((query, key)) + attn.key_proj.bias for key in keys]
        return torch.softmax(torch.stack([attn.energy.weight[0] @ h.tanh() for h in hidden]), -1)
    return torch.softmax(keys @ query / keys.size(-1) ** 0.5, dim=-1)  # Q · K^T / sqrt(d)


@pytest.mark.parametrize("rule", ["concat", "additive", "dot"])
def test_each_rule_weighs_the_values_as_the_course_writes_it(rule):
    torch.manual_seed(0)
    attn = Attn(12, 12, 10, 12, 20, rule=rule, attention_size=24)
    query, keys, values = torch.randn(12), torch.randn(6, 12), torch.randn(6, 12)
    keys = keys[:1] if rule == "concat" else keys  # concat pairs the query with one key
    output, weights = attn.attend(query[None, None], attn.project_keys(keys[None]), values[None])
    expected = course_weights(attn, query, keys, positions=6)
    torch.testing.assert_close(weights[0, 0], expected, rtol=1e-4, atol=1e-6)
    # then the course's ending: Linear([Q; weights · V])
    combined = attn.attn_combine(torch.cat((query, expected @ values)))
    torch.testing.assert_close(output[0, 0], combined, rtol=1e-4, atol=1e-5)


def test_rules_give_different_scores():
    outputs = {}
    for rule in ("additive", "dot"):
        queries, keys, values = inputs(rule)
        outputs[rule] = make(rule).attend(queries, make(rule).project_keys(keys), values)[1]
    assert not torch.allclose(outputs["additive"], outputs["dot"])


def test_concat_refuses_more_positions_than_it_has():
    attn = make("concat")
    queries, keys, _ = inputs("concat")
    with pytest.raises(Seq2SeqError, match="at most 10 positions"):
        attn.attend(queries, keys, torch.randn(3, 11, 12))


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(Seq2SeqError, match="unknown attention rule 'general'"):
        Attn(4, 4, 4, 4, 4, rule="general")
