"""Which transformers causal-LM families train packed exactly as unpacked? (`make models`)

For every architecture in the installed transformers' causal-LM mapping, and the image-text families whose
images Packer packs (verify.VISION_FAMILIES; checked with images in the packed row too): a tiny random config
(packer.train.hf.verify.tiny_config: windows of 8 tokens, soft-caps of 2, examples of 2-31 tokens), then
logits, loss and gradients packed (attn "packer") vs one example at a time (attn "eager"), fp32 on CPU.
Writes docs/MODELS.md (the table, with the reason for every refusal) and packer/train/hf/families.py (what
`use_packer_attention` consults before the first step).

    python benchmarks/model_matrix.py [--only llama,gemma2] [--timeout 120]

Each family runs in its own subprocess, so one that crashes or hangs is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pprint
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one(model_type: str, queue) -> None:
    """Verify one family; put (status, reason, figures, config types) on the queue."""
    import torch
    import transformers

    import packer.train.hf.integration as hf
    from packer.train.hf.mixers import mixers as mixers_of
    from packer.train.hf.verify import VISION_FAMILIES, tiny_config, tiny_vision_config, verify, verify_images

    hf.FAMILIES = {}  # judge every family afresh, not by the previous matrix
    hf.register(allow_unverified=True)
    try:
        cfg = (tiny_vision_config if model_type in VISION_FAMILIES else tiny_config)(model_type)
    except Exception as e:  # noqa: BLE001
        queue.put(("untested", f"no tiny config could be made here: {_short(e)}", {}, []))
        return
    try:
        why = hf.family_refusal(cfg)
        if why is not None:
            queue.put(("refused", why, {}, []))
            return
        auto = transformers.models.auto.modeling_auto
        vision = model_type in VISION_FAMILIES
        cls_name = (auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES if vision
                    else auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)[model_type]
        factory = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM

        def make(attn: str):
            torch.manual_seed(0)
            return factory.from_config(cfg, attn_implementation=attn).float()

        try:  # the reference itself must build and run, or the family cannot be judged here
            ref = make("eager")
            ids = torch.randint(1, ref.get_input_embeddings().num_embeddings, (1, 12))
            ref(input_ids=ids, position_ids=torch.arange(12)[None], labels=ids, use_cache=False).loss.backward()
        except Exception as e:  # noqa: BLE001  (any failure to build is recorded with its message)
            queue.put(("untested", f"a tiny {cls_name} does not run here even with eager attention: {_short(e)}",
                       {}, []))
            return
        try:
            make(hf.NAME)
        except hf.UnsupportedModelError as e:
            queue.put(("refused", str(e).split(": ", 1)[-1], {}, []))
            return
        except Exception as e:  # noqa: BLE001
            queue.put(("refused", f"transformers does not run {cls_name} through its attention interface "
                       f"({_short(e)})", {}, []))
            return
        v = verify(make)
        if vision and v.equal:  # image-text families: with images in the packed row too
            vi = verify_images(make)
            if not vi.equal:
                queue.put(("refused", f"packed differs from unpacked with images in the row ({vi})", {}, []))
                return
            v.logits, v.loss, v.grads = max(v.logits, vi.logits), max(v.loss, vi.loss), max(v.grads, vi.grads)
            v.config_types |= vi.config_types
    except hf.UnsupportedModelError as e:
        queue.put(("refused", str(e).split(": ", 1)[-1], {}, []))
        return
    except Exception as e:  # noqa: BLE001
        queue.put(("refused", f"the packed run fails: {_short(e)}", {}, []))
        traceback.print_exc(file=sys.stderr)
        return
    figures = {"logits": v.logits, "loss": v.loss, "grads": v.grads,
               "window": getattr(cfg, "sliding_window", None),
               "softcap": getattr(cfg, "attn_logit_softcapping", None)}
    figures["mixers"] = sorted({type(m).__name__ for m in mixers_of(make(hf.NAME))})
    figures["mechanisms"] = mechanisms(cfg, figures["mixers"])
    if v.attention_calls + v.mixer_calls == 0:
        queue.put(("refused", "its attention never reaches the attention function, so Packer cannot keep "
                   "examples apart", figures, []))
    elif v.equal:
        note = "" if v.floor is None else (
            f"verified within twice transformers' own reference's movement by batch shape alone (logits "
            f"{v.floor[0]:.1e}, gradients {v.floor[1]:.1e})")
        queue.put(("verified", note, figures, sorted(t for t in v.config_types if t)))
    else:
        queue.put(("refused", f"packed differs from unpacked ({v}): something outside attention mixes "
                   "tokens across examples or ignores position_ids", figures, []))


def mechanisms(cfg, mixer_classes: list[str]) -> list[str]:
    """What a family needed beyond varlen attention: its token mixers' mechanisms, chunked attention,
    mRoPE position rows."""
    from packer.train.hf.mixers import MECHANISMS, MROPE_FOUR_ROWS

    found = {MECHANISMS[c] for c in mixer_classes}
    configs = [cfg, *(c for c in vars(cfg).values() if hasattr(c, "model_type") and hasattr(c, "to_dict"))]
    for c in configs:
        try:
            kinds = set(getattr(c, "layer_types", None) or [])
        except Exception:  # noqa: BLE001  (per-layer attribute guards)
            kinds = set()
        if "chunked_attention" in kinds:
            found.add("chunked attention")
        if getattr(c, "model_type", None) in MROPE_FOUR_ROWS or _uses_mrope(c):
            found.add("mRoPE rows")
    return sorted(found)


def _uses_mrope(config) -> bool:
    """Whether the config's modeling code rotates by mRoPE sections (3-D text positions)."""
    import importlib
    import inspect

    name = type(config).__module__.replace(".configuration_", ".modeling_")
    try:
        return "mrope_section" in inspect.getsource(importlib.import_module(name))
    except (ImportError, OSError, TypeError):
        return False


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return text if len(text) < 160 else text[:157] + "..."


MAX_RSS_GB = 4.0  # a tiny model needs well under 1 GB; more means the config was not shrunk


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run(model_type: str, timeout: float) -> tuple[str, str, dict, list]:
    ctx = mp.get_context("fork")  # the parent has imported torch and transformers once
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(model_type, queue))
    proc.start()
    start = time.perf_counter()
    why = ""
    while proc.is_alive() and not why:
        proc.join(0.5)
        if time.perf_counter() - start > timeout:
            why = f"the check did not finish in {timeout:.0f} s"
        elif _rss_gb(proc.pid) > MAX_RSS_GB:
            why = f"its smallest config here still needs over {MAX_RSS_GB:.0f} GB"
    if why:
        proc.kill()
        proc.join()
        return "untested", why, {}, []
    if queue.empty():
        return "untested", f"the check process died (exit code {proc.exitcode})", {}, []
    return queue.get()


def write(results: dict, version: str) -> None:
    families: dict[str, dict[str, str]] = {}
    for kind, (status, _, fig, _) in results.items():  # what each verified family needed, from its tiny config
        if status == "verified":
            from packer.train.hf.verify import VISION_FAMILIES, tiny_config, tiny_vision_config

            fig["mechanisms"] = mechanisms((tiny_vision_config if kind in VISION_FAMILIES else tiny_config)(kind),
                                           fig.get("mixers") or [])
    for kind, (status, reason, _, types) in sorted(results.items()):
        families[kind] = {"status": "verified" if status == "verified" else "refused",
                          "reason": reason if status != "untested" else f"not verified: {reason}"}
    for kind, (status, _, _, types) in sorted(results.items()):
        for t in types:  # sub-configs (a text decoder inside a composite model) of verified families
            families.setdefault(t, {"status": "verified", "reason": ""})
    (ROOT / "packer" / "train" / "hf" / "families.py").write_text(
        '"""Which transformers model families train packed exactly as unpacked: written by `make models`\n'
        "(benchmarks/model_matrix.py) from a run over every causal-LM architecture; do not edit by hand.\n\n"
        'FAMILIES maps a config\'s model_type to {"status": "verified" | "refused", "reason": str}.\n"""\n\n'
        f"TRANSFORMERS_VERSION = {version!r}\n"
        f"FAMILIES: dict[str, dict[str, str]] = {pprint.pformat(families, width=110, sort_dicts=True)}\n")
    n = {s: sum(r[0] == s for r in results.values()) for s in ("verified", "refused", "untested")}
    lines = [
        "# Model families: packed equals unpacked, or refused",
        "",
        f"Made by `make models` (benchmarks/model_matrix.py) on transformers {version}, CPU, fp32. For each",
        "causal-LM architecture: a tiny random config (sliding windows of 8 tokens and attention soft-caps",
        "of 2 where the family has them; examples of 2 to 31 tokens, so windows bite), then logits, loss and",
        "gradients of one packed row (`attn_implementation=\"packer\"`) against each example alone through",
        "transformers' eager attention. Verified means logits within 1e-4 and gradients within 1e-4 of the",
        "largest value, loss within 1e-5 relative (or, for a family whose own reference moves by more than",
        "that when only the batch shape changes, within twice that movement and never beyond 10x the",
        "tolerances; the reason column says so). Every other family is refused by `use_packer_attention`",
        "before the first step with the reason below (families not verified here are refused too, unless",
        "`allow_unverified=True`). The image-text families whose images Packer packs (llava, qwen2_vl, qwen2_5_vl,",
        "qwen3_vl) are checked a second time with images in the packed row: two images in one example, one in the",
        "next, none in the third, Packer's mRoPE position rows, against each example alone with the model's own",
        "positions (packer.train.hf.verify.verify_images); the figures are the worse of the two checks.",
        "",
        f"**{n['verified']} verified, {n['refused']} refused, {n['untested']} could not be tested here "
        "(refused at run time as unverified).**",
        "",
        "Why families are refused:",
        "",
        *[f"- {n_why} x {why}" for why, n_why in _why_counts(results)],
        "",
        "What verified families needed beyond varlen attention (packer.train.hf.mixers: token mixers run",
        "from a fresh state per example, chunks counted from each example's start, mRoPE position rows):",
        "",
        *[f"- {n_mech} x {mech}" for mech, n_mech in _mechanism_counts(results)],
        "",
        "Verified holds for the layer types the tiny config has (one of each kind the family's default",
        "config has); a checkpoint whose config adds a layer type or mixer class Packer does not know is",
        "refused at run time by name.",
        "",
        "| model_type | status | mechanism | logits | loss | gradients | window | softcap | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, (status, reason, fig, _) in sorted(results.items()):
        f = (lambda k: f"{fig[k]:.1e}" if k in fig else "")
        mech = ", ".join(fig.get("mechanisms") or []) if status == "verified" else ""
        lines.append(f"| {kind} | {status} | {mech or ('attention only' if status == 'verified' else '')} | "
                     f"{f('logits')} | {f('loss')} | {f('grads')} | {fig.get('window') or ''} | "
                     f"{fig.get('softcap') or ''} | {reason.replace('|', '/')} |")
    (ROOT / "docs" / "MODELS.md").write_text("\n".join(lines) + "\n")
    print(f"{n['verified']} verified, {n['refused']} refused, {n['untested']} untested -> docs/MODELS.md")


CATEGORIES = (
    ("its layers of type", "layer types Packer has no exact packed path for (indexed or compressed sparse "
                           "attention, which select keys across the whole row)"),
    ("its attention never reaches", "attention computed outside transformers' attention interface (ALiBi, "
                                    "relative or custom attention), which Packer cannot reach"),
    ("its ", "token mixer classes Packer does not implement (named in the reason)"),
    ("transformers does not run", "attention computed outside transformers' attention interface (ALiBi, "
                                  "relative or custom attention), which Packer cannot reach"),
    ("packed differs", "outputs differ packed vs unpacked: positions not taken from position_ids (learned "
                       "decoder positions), or stochastic routing in training"),
    ("packer attention cannot run", "an attention argument or mask Packer does not implement"),
    ("", "the packed forward pass fails"),
)


def _mechanism_counts(results: dict) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for status, _, fig, _ in results.values():
        if status == "verified":
            for mech in fig.get("mechanisms") or ["attention only (varlen attention and position_ids)"]:
                counts[mech] = counts.get(mech, 0) + 1
    return sorted(counts.items(), key=lambda x: (-x[1], x[0]))


def _why_counts(results: dict) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for status, reason, _, _ in results.values():
        if status == "refused":
            why = next(text for prefix, text in CATEGORIES if reason.startswith(prefix))
            counts[why] = counts.get(why, 0) + 1
    return sorted(counts.items(), key=lambda x: -x[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model types (default: all)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per family")
    ap.add_argument("--dry", action="store_true", help="print, do not write docs/MODELS.md")
    ap.add_argument("--resume", default="", help="a JSON-lines file of finished families: reuse, and append")
    ap.add_argument("--write-only", action="store_true", help="write the docs from --resume's families, run none")
    args = ap.parse_args()
    import torch  # noqa: F401  (imported once here; each forked check inherits it)
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    import packer.train.hf.verify  # noqa: F401

    from packer.train.hf.verify import VISION_FAMILIES

    kinds = [k for k in sorted({*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, *VISION_FAMILIES})
             if not args.only or k in args.only.split(",")]
    results = {}
    if args.resume and Path(args.resume).is_file():
        for line in Path(args.resume).read_text().splitlines():
            row = json.loads(line)
            if row["version"] == transformers.__version__:
                results[row["kind"]] = tuple(row["result"])
    t0 = time.perf_counter()
    for i, kind in enumerate(kinds):
        if kind in results or args.write_only:
            continue
        results[kind] = run(kind, args.timeout)
        if args.resume:
            with open(args.resume, "a") as f:
                f.write(json.dumps({"kind": kind, "version": transformers.__version__, "result": results[kind]}) + "\n")
        status, reason = results[kind][:2]
        print(f"[{i + 1}/{len(kinds)}] {kind:28} {status:9} {reason[:110]}", flush=True)
    print(f"{len(kinds)} families in {time.perf_counter() - t0:.0f} s")
    results = {k: results[k] for k in kinds if k in results}
    if args.dry or args.only:
        print(json.dumps({k: r[:2] for k, r in results.items()}, indent=1))
        return
    write(results, transformers.__version__)


if __name__ == "__main__":
    main()
