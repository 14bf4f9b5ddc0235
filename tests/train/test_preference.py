"""Preference data packed exactly: per-segment log-probs, every loss and its gradient equal the unpacked ones,
in both layouts, under gradient accumulation and data parallelism (normalized by global_num_pairs)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import packer
from packer import preference as P
from packer.core import config as C
from packer.core.formats.tokenized import open_tokenized

transformers = pytest.importorskip("transformers")

WORDS = ["the", "sky", "is", "blue", "green", "answer", "four", "five", "because", "x", "ü", "中"]


def records(n: int, seed: int = 0, chats: int = 4) -> list[dict]:
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for i in range(n):
        prompt = f"Q{i}: " + text(rng.randint(1, 30))
        c, r = " " + text(rng.randint(1, 25)), " " + text(rng.randint(1, 40))
        if c == r:
            r += " no"
        if i < chats:
            out.append({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
                        "chosen": [{"role": "assistant", "content": c}],
                        "rejected": [{"role": "assistant", "content": r}]})
        else:
            out.append({"prompt": prompt, "chosen": c, "rejected": r})
    return out


def kto_records(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"P{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))),
             "completion": " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))),
             "label": bool(rng.getrandbits(1))} for i in range(n)]


def make_run(tmp_path, recs, layout, pack_len=1024, name="run", **plan):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = tmp_path / f"{name}-{layout}"
    packer.pack([str(src)], run, tokenizer="byte", tokenize_config=C.TokenizeConfig(kind="preference"),
                plan_config=C.PlanConfig(pack_len=pack_len, layout=layout, algorithm="bfd", **plan))
    return run


def model(vocab: int, seed: int = 0):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).float()


def rows_of(run) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """(record, role) -> (ids, loss mask) of every tokenized row."""
    _, tables = open_tokenized(run / "tokenized")
    out = {}
    for t in tables:
        d = t.to_pydict()
        for e, r, ids, m in zip(d["example_index"], d["role"], d["input_ids"], d["loss_mask"]):
            out[(e, r)] = (torch.tensor(ids), torch.tensor(m, dtype=torch.bool))
    return out


def unpacked_logps(m, run) -> dict[tuple[int, int], tuple[torch.Tensor, int]]:
    """Each row alone, unpadded: sum over its trained tokens t >= 1 of log softmax(logits[t-1])[ids[t]]."""
    out = {}
    for key, (ids, mask) in rows_of(run).items():
        logits = m(input_ids=ids[None]).logits[0]
        lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None]).squeeze(1)
        out[key] = (lp[mask[1:]].sum(), int(mask[1:].sum()))
    return out


def packed_logps(m, batch):
    kwargs = {"attention_mask": P.shared_prompt_mask(batch)}
    logits = m(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits
    return P.sequence_logps(logits, batch["labels"], batch["cu_seqlens"], prompt_segment=batch["prompt_segment"])


LOSSES = {
    "dpo": lambda pc, pr, rc, rr, nc, nr: P.dpo(pc, pr, rc, rr, beta=0.1),
    "ipo": lambda pc, pr, rc, rr, nc, nr: P.dpo(pc, pr, rc, rr, beta=0.1, loss_type="ipo", nc=nc, nr=nr),
    "hinge": lambda pc, pr, rc, rr, nc, nr: P.dpo(pc, pr, rc, rr, beta=0.1, loss_type="hinge"),
    "simpo": lambda pc, pr, rc, rr, nc, nr: P.simpo(pc, pr, nc, nr),
    "orpo": lambda pc, pr, rc, rr, nc, nr: P.orpo(pc, pr, nc, nr),
}


def _grads(m):
    return torch.cat([p.grad.reshape(-1) for p in m.parameters()])


def packed_step(run, policy, ref, loss_fn, batch_size, world_size=1, local_norm=False):
    """One optimizer step over every pack (gradient accumulation over micro-batches, ranks summed): the
    per-pair losses summed and divided by global_num_pairs (local_norm: each micro-batch's mean, then the mean
    of micro-batches, the normalization that gets a wrong gradient when micro-batches differ)."""
    policy.zero_grad()
    total_loss = 0.0
    loaders = [packer.PackedLoader(run, batch_size, rank=r, world_size=world_size, shuffle=False, drop_last=False)
               for r in range(world_size)]
    steps = [list(ld) for ld in loaders]
    total_pairs = sum(b["global_num_pairs"] for b in steps[0])
    assert all(sum(b["global_num_pairs"] for b in s) == total_pairs for s in steps)  # every rank knows it
    micro = sum(len(s) for s in steps)
    counts = []
    for s in steps:
        for b in s:
            if b["num_pairs"] == 0:
                continue
            c, r = P.pairs(b)
            lp, n = packed_logps(policy, b)
            with torch.no_grad():
                rlp, _ = packed_logps(ref, b)
            per = loss_fn(lp[c], lp[r], rlp[c], rlp[r], n[c], n[r])
            counts.append(len(c))
            loss = per.mean() / micro if local_norm else per.sum() / total_pairs
            loss.backward()
            total_loss += float(loss)
    return _grads(policy), counts, total_loss


def consumed_records(run, batch_size, world_size):
    """Record numbers of the pairs every rank reads in an epoch, with repeats (drop_last=False completes the
    last step by repeating packs, as DistributedSampler does)."""
    out = []
    for r in range(world_size):
        for b in packer.PackedLoader(run, batch_size, rank=r, world_size=world_size, shuffle=False, drop_last=False):
            out.extend(int(e) for e, role in zip(b["pair_index"].tolist(), b["segment_role"].tolist()) if role == 1)
    return sorted(out)


def unpacked_step(run, policy, ref, loss_fn, records=None):
    policy.zero_grad()
    lp = unpacked_logps(policy, run)
    with torch.no_grad():
        rlp = unpacked_logps(ref, run)
    records = sorted({e for e, _ in lp}) if records is None else records
    pc, pr = torch.stack([lp[(e, 1)][0] for e in records]), torch.stack([lp[(e, 2)][0] for e in records])
    rc, rr = torch.stack([rlp[(e, 1)][0] for e in records]), torch.stack([rlp[(e, 2)][0] for e in records])
    nc, nr = torch.tensor([lp[(e, 1)][1] for e in records]), torch.tensor([lp[(e, 2)][1] for e in records])
    loss = loss_fn(pc, pr, rc, rr, nc, nr).mean()
    loss.backward()
    return _grads(policy), float(loss)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pref")
    recs = records(14)
    return {layout: make_run(tmp, recs, layout) for layout in ("pairs", "shared-prompt")}


def _models(run):
    vocab = packer.PackedShards(run).vocab_size
    policy, ref = model(vocab, 0), model(vocab, 0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy, ref


@pytest.mark.parametrize("layout", ["pairs", "shared-prompt"])
def test_sequence_logps_equal_each_row_alone(runs, layout):
    run = runs[layout]
    policy, _ = _models(run)
    ref = unpacked_logps(policy, run)
    seen = set()
    for b in packer.PackedLoader(run, 2, shuffle=False, drop_last=False):
        lp, n = packed_logps(policy, b)
        for k in range(len(lp)):
            e, role = int(b["pair_index"][k]), int(b["segment_role"][k])
            if e < 0 or role == 6:
                continue
            want, count = ref[(e, role)]
            assert int(n[k]) == count, (layout, e, role)
            assert abs(float(lp[k]) - float(want)) <= 1e-5 * max(1.0, abs(float(want))), (layout, e, role)
            seen.add((e, role))
    assert seen == set(ref)  # every row, once


@pytest.mark.parametrize("layout", ["pairs", "shared-prompt"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_and_gradients_equal_unpacked(runs, layout, name):
    run = runs[layout]
    policy, ref = _models(run)
    want, want_loss = unpacked_step(run, policy, ref, LOSSES[name])
    got, counts, got_loss = packed_step(run, policy, ref, LOSSES[name], batch_size=1)
    assert len(set(counts)) > 1, counts  # micro-batches hold different numbers of pairs
    err = float((got - want).abs().max() / want.abs().max())
    norm = float((got - want).norm() / want.norm())
    loss_err = abs(got_loss - want_loss) / abs(want_loss)
    print(f"\n{name} {layout}: micro-batch pairs {counts}, loss relative difference {loss_err:.1e}, gradient "
          f"{norm:.1e} (norm of the difference / norm), {err:.1e} (largest entry)")
    assert loss_err < 2e-6 and norm < 1e-5 and err < 1e-5, (loss_err, norm, err)  # float32 rounding: see below
    want2, _ = unpacked_step(run, policy, ref, LOSSES[name], consumed_records(run, 1, 2))
    got2, _, _ = packed_step(run, policy, ref, LOSSES[name], batch_size=1, world_size=2)
    assert float((got2 - want2).abs().max() / want2.abs().max()) < 1e-5


@pytest.mark.parametrize("layout", ["pairs", "shared-prompt"])
def test_negative_control_local_pair_count_normalization_differs(runs, layout):
    """The ms-swift bug: each micro-batch's own mean, averaged over micro-batches of different sizes."""
    run = runs[layout]
    policy, ref = _models(run)
    want, _ = unpacked_step(run, policy, ref, LOSSES["dpo"])
    got, counts, _ = packed_step(run, policy, ref, LOSSES["dpo"], batch_size=1, local_norm=True)
    err = float((got - want).abs().max() / want.abs().max())
    print(f"\nlocal normalization, {layout}: micro-batch pairs {counts}, gradient relative difference {err:.1e}")
    assert err > 1e-2, err


@pytest.mark.parametrize("layout", ["pairs", "shared-prompt"])
def test_kto_equals_unpacked_with_its_pack_time_kl(tmp_path, layout):
    run = make_run(tmp_path, kto_records(12), layout, name="kto")
    policy, ref = _models(run)
    # unpacked: every completion with its own KL row (fixed at pack time), mean over completions
    policy.zero_grad()
    lp = unpacked_logps(policy, run)
    with torch.no_grad():
        rlp = unpacked_logps(ref, run)
    recs = sorted({e for e, _ in lp})
    role = {e: next(r for (x, r) in lp if x == e and r != 5) for e in recs}
    per = P.kto(torch.stack([lp[(e, role[e])][0] for e in recs]), torch.stack([rlp[(e, role[e])][0] for e in recs]),
                torch.stack([lp[(e, 5)][0] for e in recs]).detach(), torch.stack([rlp[(e, 5)][0] for e in recs]),
                torch.tensor([role[e] == 3 for e in recs]))
    per.mean().backward()
    want = _grads(policy)
    policy.zero_grad()
    batches = list(packer.PackedLoader(run, 1, shuffle=False, drop_last=False))
    total = sum(b["global_num_pairs"] for b in batches)
    for b in batches:
        rows, kl = P.unpaired(b)
        lp2, _ = packed_logps(policy, b)
        with torch.no_grad():
            r2, _ = packed_logps(ref, b)
        (P.kto(lp2[rows], r2[rows], lp2[kl], r2[kl], b["label"][rows]).sum() / total).backward()
    got = _grads(policy)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("layout", ["pairs", "shared-prompt"])
def test_in_float64_packed_equals_unpacked_to_rounding(runs, layout):
    """What float32 leaves (up to ~1e-5 of DPO's small gradient) is arithmetic, not packing: in float64 the packed
    step equals the unpacked one to ~1e-14 in the pairs layout and ~5e-9 in the shared-prompt layout (only the first
    layer's gradients move there: CPU attention kernels order the prompt's two contributions differently), against
    1e-1 for a wrong normalization."""
    run = runs[layout]
    policy, ref = (m.double() for m in _models(run))
    want, want_loss = unpacked_step(run, policy, ref, LOSSES["dpo"])
    got, _, got_loss = packed_step(run, policy, ref, LOSSES["dpo"], batch_size=1)
    err = float((got - want).norm() / want.norm())
    print(f"\nfloat64 dpo {layout}: loss relative difference {abs(got_loss - want_loss) / want_loss:.1e}, "
          f"gradient {err:.1e}")
    assert abs(got_loss - want_loss) / want_loss < 1e-12 and err < 1e-7


def test_bradley_terry_from_a_reward_head_on_packed_pairs(runs):
    """Reward-model pairs: each segment's score at its last token, -log σ(rc - rr - margin) + c (rc + rr)^2."""
    run = runs["pairs"]
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 1)
    policy, _ = _models(run)
    got, want = [], []
    rows = rows_of(run)
    for b in packer.PackedLoader(run, 1, shuffle=False, drop_last=False):
        h = policy.model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                         attention_mask=P.shared_prompt_mask(b)).last_hidden_state
        scores = P.last_token_scores(head(h).squeeze(-1), b["cu_seqlens"])
        c, r = P.pairs(b)
        got.append(P.bradley_terry(scores[c], scores[r], margin=0.5, center_coefficient=0.01))
        for e in b["pair_index"][c].tolist():
            s = [head(policy.model(input_ids=rows[(e, role)][0][None]).last_hidden_state)[0, -1, 0] for role in (1, 2)]
            want.append(-torch.nn.functional.logsigmoid(s[0] - s[1] - 0.5) + 0.01 * (s[0] + s[1]) ** 2)
    got, want = torch.cat(got), torch.stack(want)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_packed_dataset_from_files_takes_the_preference_kind(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records(6, chats=0)))
    ds = packer.packed_dataset_from_files([str(src)], "byte", pack_len=1024, kind="preference", layout="shared-prompt",
                                          cache_dir=str(tmp_path / "cache"))
    assert ds.manifest["counts"]["preference"]["pairs"] == 6
