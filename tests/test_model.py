import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from seq2seq.core.model import CELLS, DECODERS, ModelConfig, Seq2Seq
from seq2seq.core.search import SearchSettings, greedy_search
from seq2seq.core.tokenizer import BOS_ID, EOS_ID, PAD_ID
from seq2seq.errors import Seq2SeqError

VOCAB = 50


def network(**overrides) -> Seq2Seq:
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_size=16, encoder_hidden_size=12, decoder_hidden_size=20, dropout=0.0, **overrides
    )
    return Seq2Seq(VOCAB, VOCAB + 7, config).eval()


def padded(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sentences])
    batch = torch.full((len(sentences), int(lengths.max())), PAD_ID)
    for row, sentence in enumerate(sentences):
        batch[row, : len(sentence)] = torch.tensor(sentence)
    return batch, lengths


ARCHITECTURES = [{"cell": cell, "decoder": decoder} for cell in CELLS for decoder in DECODERS]
ARCHITECTURE_IDS = [f"{a['cell']}-{a['decoder']}" for a in ARCHITECTURES]
each_architecture = pytest.mark.parametrize("architecture", ARCHITECTURES, ids=ARCHITECTURE_IDS)

SENTENCES = [[5, 6, 7, 8, 9, EOS_ID], [10, 11, EOS_ID], [12, 13, 14, 15, 16, 17, 18, 19, EOS_ID]]


@each_architecture
@pytest.mark.parametrize("rule", ["additive", "dot", "concat"])
@pytest.mark.parametrize("deep", [False, True])
def test_forward_backward_shapes(architecture, rule, deep):
    # cgru has one decoder layer
    layers = {"decoder_layers": 2} if architecture["decoder"] == "bahdanau" else {}
    overrides = {"tie_embeddings": True, "encoder_layers": 2, **layers} if deep else {}
    net = network(attention=rule, **architecture, **overrides).train()
    source, lengths = padded(SENTENCES)
    target_in = torch.randint(4, VOCAB, (3, 5))
    logits = net(source, lengths, target_in)
    assert logits.shape == (3, 5, VOCAB + 7)
    F.cross_entropy(logits.flatten(0, 1), torch.randint(4, VOCAB, (15,))).backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert unused == []


@each_architecture
@pytest.mark.parametrize("rule", ["additive", "dot", "concat"])
def test_teacher_forced_pass_equals_step_by_step_decoding(architecture, rule):
    net = network(attention=rule, **architecture)
    source, lengths = padded(SENTENCES)
    target_in = torch.cat((torch.full((3, 1), BOS_ID), torch.randint(4, VOCAB, (3, 4))), dim=1)
    whole = net(source, lengths, target_in)
    state = net.encode(source, lengths)
    for t in range(target_in.size(1)):
        logits, _, state = net.decode_step(state, target_in[:, t])
        torch.testing.assert_close(logits, whole[:, t], rtol=1e-4, atol=1e-5)


def test_scheduled_sampling_feeds_predictions():
    net = network()
    source, lengths = padded(SENTENCES)
    target_in = torch.randint(4, VOCAB, (3, 6))
    forced = net(source, lengths, target_in, teacher_forcing=1.0)
    sampled = net(source, lengths, target_in, teacher_forcing=0.0)
    assert sampled.shape == forced.shape
    torch.testing.assert_close(sampled[:, 0], forced[:, 0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sampled[:, 1:], forced[:, 1:])


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.0])
def test_logits_at_chosen_positions_are_those_of_the_whole_batch(teacher_forcing):
    net = network()
    source, lengths = padded(SENTENCES)
    target_in = torch.randint(4, VOCAB, (3, 6))
    positions = torch.rand(3, 6) < 0.5
    torch.manual_seed(1)
    whole = net(source, lengths, target_in, teacher_forcing)
    torch.manual_seed(1)
    chosen = net(source, lengths, target_in, teacher_forcing, positions=positions)
    torch.testing.assert_close(chosen, whole[positions])


@each_architecture
@pytest.mark.parametrize("rule", ["additive", "dot", "concat"])
def test_sentence_alone_and_in_padded_batch_give_the_same_output(architecture, rule):
    net = network(attention=rule, **architecture)
    alone = [greedy_search(net, *padded([s]))[0] for s in SENTENCES]
    together = greedy_search(net, *padded(SENTENCES))
    for single, batched in zip(alone, together):
        assert single.tokens == batched.tokens
        assert single.score == pytest.approx(batched.score, abs=1e-4)
        torch.testing.assert_close(single.attention, batched.attention, rtol=1e-4, atol=1e-5)


def test_greedy_attention_covers_the_real_source_only():
    net = network()
    for sentence, hypothesis in zip(SENTENCES, greedy_search(net, *padded(SENTENCES))):
        assert hypothesis.attention.shape[1] == len(sentence)
        torch.testing.assert_close(
            hypothesis.attention.sum(-1), torch.ones(hypothesis.attention.shape[0])
        )


def test_greedy_output_is_capped_by_source_length():
    net = network()
    source, lengths = padded(SENTENCES)
    for hypothesis, length in zip(
        greedy_search(net, source, lengths, SearchSettings(max_length_ratio=1.0, min_length=2)),
        lengths,
    ):
        assert len(hypothesis.tokens) <= int(length)


def test_state_select_sentences_selects_batch_rows():
    net = network()
    source, lengths = padded(SENTENCES)
    state = net.encode(source, lengths)
    reordered = state.select_sentences(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(reordered.hidden[:, 0], state.hidden[:, 2])
    torch.testing.assert_close(reordered.memory[2], state.memory[0])
    assert reordered.source_mask[1].sum() == len(SENTENCES[2])


@each_architecture
@pytest.mark.parametrize("rule", ["additive", "dot", "concat"])
def test_beams_share_encoder_states_and_decode_like_copied_sentences(architecture, rule):
    net = network(attention=rule, **architecture)
    source, lengths = padded(SENTENCES)
    state = net.encode(source, lengths)
    previous = torch.randint(4, VOCAB, (3 * 2,))  # two different beams per sentence
    # one row grows into two per sentence
    beams = state.select_beams(torch.arange(3).repeat_interleave(2))
    assert beams.memory is state.memory and beams.hidden.size(1) == 6 and beams.beams == 2
    logits, weights, after = net.decode_step(beams, previous)
    # every beam its own memory copy
    copies = state.select_sentences(torch.arange(3).repeat_interleave(2))
    expected_logits, expected_weights, _ = net.decode_step(copies, previous)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(weights, expected_weights)
    followed = after.select_beams(torch.tensor([1, 1, 2, 3, 5, 4]))
    torch.testing.assert_close(followed.hidden[:, 0], after.hidden[:, 1])
    dropped = followed.select_sentences(torch.tensor([2]))
    torch.testing.assert_close(dropped.hidden, followed.hidden[:, 4:])
    assert dropped.memory.size(0) == 1 and dropped.beams == 2
    if architecture["cell"] == "lstm":  # the cell state follows the same rows as h
        torch.testing.assert_close(followed.cell_state[:, 0], after.cell_state[:, 1])
        torch.testing.assert_close(dropped.cell_state, followed.cell_state[:, 4:])
    else:
        assert after.cell_state is None


def test_the_lstm_decoder_carries_its_cell_state_from_step_to_step():
    net = network(cell="lstm")
    source, lengths = padded(SENTENCES)
    state = net.encode(source, lengths)
    assert state.cell_state.shape == state.hidden.shape and not state.cell_state.any()
    _, _, after = net.decode_step(state, torch.full((3,), BOS_ID))
    forgotten = replace(after, cell_state=torch.zeros_like(after.cell_state))
    previous = torch.tensor([5, 6, 7])
    assert not torch.allclose(
        net.decode_step(after, previous)[0], net.decode_step(forgotten, previous)[0]
    )


def course_rnn(inputs: torch.Tensor, layer: torch.nn.RNNBase, suffix: str = "") -> torch.Tensor:
    """The course's formula h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) from h_0 = 0,
    over inputs (T, I), with the weights of one direction of `layer`. Returns (T, hidden)."""
    w_ih, w_hh = getattr(layer, f"weight_ih_l0{suffix}"), getattr(layer, f"weight_hh_l0{suffix}")
    b_ih, b_hh = getattr(layer, f"bias_ih_l0{suffix}"), getattr(layer, f"bias_hh_l0{suffix}")
    h = torch.zeros(layer.hidden_size)
    states = []
    for x in inputs:
        h = torch.tanh(w_ih @ x + b_ih + w_hh @ h + b_hh)
        states.append(h)
    return torch.stack(states)


@torch.no_grad()
def test_the_plain_rnn_cell_is_the_course_formula():
    net = network(cell="rnn")
    sentence = torch.tensor(SENTENCES[0])
    states, _ = net.encoder(sentence[None], torch.tensor([len(sentence)]))  # (1, S, 2H)
    embedded = net.encoder.embedding(sentence)  # (S, E)
    forward = course_rnn(embedded, net.encoder.rnn)
    backward = course_rnn(embedded.flip(0), net.encoder.rnn, "_reverse").flip(0)
    torch.testing.assert_close(states[0], torch.cat((forward, backward), dim=-1))
    # the decoder's recurrence: one step from its first state
    state = net.encode(sentence[None], torch.tensor([len(sentence)]))
    _, _, after = net.decode_step(state, torch.tensor([BOS_ID]))
    rnn = net.decoder.rnn
    expected = torch.tanh(
        rnn.weight_ih_l0 @ net.decoder.embedding.weight[BOS_ID]
        + rnn.bias_ih_l0
        + rnn.weight_hh_l0 @ state.hidden[0, 0]
        + rnn.bias_hh_l0
    )
    torch.testing.assert_close(after.hidden[0, 0], expected)


@torch.no_grad()
@pytest.mark.parametrize("decoder", DECODERS)
def test_a_one_way_encoder_reads_left_to_right_and_its_decoders_attend_over_it(decoder):
    net = network(cell="rnn", bidirectional=False, decoder=decoder)
    sentence = torch.tensor(SENTENCES[0])
    states, final = net.encoder(sentence[None], torch.tensor([len(sentence)]))  # (1, S, H)
    forward = course_rnn(net.encoder.embedding(sentence), net.encoder.rnn)
    torch.testing.assert_close(states[0], forward)
    torch.testing.assert_close(final[0], forward[-1])
    source, lengths = padded(SENTENCES)
    target_in = torch.cat((torch.full((3, 1), BOS_ID), torch.randint(4, VOCAB, (3, 4))), dim=1)
    whole = net(source, lengths, target_in)
    state = net.encode(source, lengths)
    assert state.memory.shape == (3, source.size(1), 12)
    for t in range(target_in.size(1)):
        logits, _, state = net.decode_step(state, target_in[:, t])
        torch.testing.assert_close(logits, whole[:, t], rtol=1e-4, atol=1e-5)


def course_lstm(inputs: torch.Tensor, layer: torch.nn.LSTM) -> torch.Tensor:
    """The course's LSTM from h_0 = c_0 = 0 over inputs (T, I), each gate a linear layer of
    [x_t, h_{t-1}] (torch keeps the two halves as W_i* and W_h*, rows in the order i, f, g, o):

        f_t = sigmoid(W_f [x_t, h_{t-1}] + b_f)      forget gate
        i_t = sigmoid(W_i [x_t, h_{t-1}] + b_i)      input gate
        C~_t = tanh(W_C [x_t, h_{t-1}] + b_C)        candidate cell state
        C_t = f_t * C_{t-1} + i_t * C~_t             cell state
        o_t = sigmoid(W_o [x_t, h_{t-1}] + b_o)      output gate
        h_t = o_t * tanh(C_t)
    """
    h = c = torch.zeros(layer.hidden_size)
    states = []
    for x in inputs:
        gates = (
            layer.weight_ih_l0 @ x + layer.bias_ih_l0 + layer.weight_hh_l0 @ h + layer.bias_hh_l0
        )
        i, f, candidate, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(candidate)
        h = torch.sigmoid(o) * torch.tanh(c)
        states.append(h)
    return torch.stack(states)


def course_gru(inputs: torch.Tensor, layer: torch.nn.GRU) -> torch.Tensor:
    """The course's GRU from h_0 = 0 over inputs (T, I), as torch computes it (rows r, z, n):

        r_t = sigmoid(W_r [x_t, h_{t-1}] + b_r)                reset gate
        z_t = sigmoid(W_z [x_t, h_{t-1}] + b_z)                update gate
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Two differences from the course's drawing, both torch's (and cuDNN's): the reset gate
    multiplies W_hn h_{t-1} rather than h_{t-1} itself, and z_t is the share of the old
    state kept (the course's is the share of the new one, so the learned W_z changes sign).
    """
    h = torch.zeros(layer.hidden_size)
    states = []
    for x in inputs:
        input_r, input_z, input_n = (layer.weight_ih_l0 @ x + layer.bias_ih_l0).chunk(3)
        state_r, state_z, state_n = (layer.weight_hh_l0 @ h + layer.bias_hh_l0).chunk(3)
        reset, update = torch.sigmoid(input_r + state_r), torch.sigmoid(input_z + state_z)
        new = torch.tanh(input_n + reset * state_n)
        h = (1 - update) * new + update * h
        states.append(h)
    return torch.stack(states)


@torch.no_grad()
@pytest.mark.parametrize("cell, formula", [("lstm", course_lstm), ("gru", course_gru)])
def test_the_gated_cells_are_the_course_formulas(cell, formula):
    net = network(cell=cell)
    sentence = torch.tensor(SENTENCES[2])
    states, _ = net.encoder(sentence[None], torch.tensor([len(sentence)]))  # (1, S, 2H)
    forward = formula(net.encoder.embedding(sentence), net.encoder.rnn)  # (S, H)
    torch.testing.assert_close(states[0, :, : forward.size(1)], forward)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"cell": "transformer"}, "unknown model cell cell='transformer'; choose one of gru"),
        ({"decoder_cell": "lstmm"}, "decoder_cell='lstmm'"),
        ({"decoder": "luong"}, "unknown decoder 'luong'; choose one of bahdanau, cgru"),
        ({"decoder": "cgru", "decoder_layers": 2}, "set decoder_layers 1 or decoder bahdanau"),
    ],
)
def test_unknown_cells_and_decoders_are_refused_with_the_choices(settings, message):
    with pytest.raises(Seq2SeqError, match=re.escape(message)):
        ModelConfig(**settings)


def test_encoder_and_decoder_cells_can_differ():
    net = network(cell="gru", decoder_cell="lstm")
    assert isinstance(net.encoder.rnn, torch.nn.GRU) and isinstance(net.decoder.rnn, torch.nn.LSTM)


@each_architecture
def test_beam_of_one_equals_greedy(architecture):
    from seq2seq.core.search import beam_search

    net = network(**architecture)
    source, lengths = padded(SENTENCES)
    greedy = greedy_search(net, source, lengths)
    beam = beam_search(net, source, lengths, SearchSettings(beam_size=1))
    for g, (b,) in zip(greedy, beam):
        assert b.tokens == g.tokens
        assert b.log_probability == pytest.approx(g.log_probability, abs=1e-4)
        torch.testing.assert_close(b.attention, g.attention)


def test_beam_decodes_its_first_step_once_per_sentence(monkeypatch):
    from seq2seq.core.search import beam_search

    net = network()
    source, lengths = padded(SENTENCES)
    rows = []
    decode_step = net.decode_step

    def counting_decode_step(state, previous):
        rows.append(previous.numel())
        return decode_step(state, previous)

    monkeypatch.setattr(net, "decode_step", counting_decode_step)
    beam_search(net, source, lengths, SearchSettings(beam_size=4, min_length=3))
    assert rows[0] == 3 and rows[1] == 3 * 4  # all beams start alike: one row each, then four


@each_architecture
def test_beam_nbest_is_sorted_sized_and_batch_independent(architecture):
    from seq2seq.core.search import beam_search

    net = network(**architecture)
    source, lengths = padded(SENTENCES)
    together = beam_search(net, source, lengths, SearchSettings(beam_size=4, nbest=3))
    for sentence, nbest in zip(SENTENCES, together):
        assert len(nbest) == 3
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        alone = beam_search(net, *padded([sentence]), SearchSettings(beam_size=4, nbest=3))[0]
        assert [h.tokens for h in alone] == [h.tokens for h in nbest]
        for h in nbest:
            assert h.attention.shape[1] == len(sentence)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_word_dropout_zeroes_whole_token_embeddings_in_training_only(side):
    net = network(word_dropout=0.5).train()
    module = getattr(net, side)
    source, _ = padded(SENTENCES)
    embedding = module.embedding(source)  # (B, S, E)
    torch.manual_seed(1)
    dropped = module.word_dropout(embedding)
    zeroed = (dropped == 0).all(-1)  # (B, S): a dropped token loses every unit
    kept = ~zeroed
    assert 0 < zeroed.sum() < zeroed.numel()
    torch.testing.assert_close(dropped[kept], embedding[kept] * 2.0)  # scaled by 1 / (1 - p)
    net.eval()
    assert torch.equal(module.word_dropout(embedding), embedding)


def test_word_dropout_changes_the_training_pass_only():
    source, lengths = padded(SENTENCES)
    target_in = torch.randint(4, VOCAB, (3, 5))
    plain, dropped = network().train(), network(word_dropout=0.3).train()
    torch.manual_seed(2)
    expected = plain(source, lengths, target_in)
    torch.manual_seed(2)
    assert not torch.allclose(dropped(source, lengths, target_in), expected)
    torch.testing.assert_close(
        dropped.eval()(source, lengths, target_in), plain.eval()(source, lengths, target_in)
    )


@pytest.mark.parametrize("name", ["dropout", "word_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_dropout_outside_zero_to_one_is_refused_by_name(name, value):
    with pytest.raises(Seq2SeqError, match=f"model.network.{name}={value} is a probability"):
        ModelConfig(**{name: value})
