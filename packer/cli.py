"""The `packer` command line: `pack` runs every stage; `tokenize`, `plan` and `write` run one each."""

from __future__ import annotations

import errno
import functools
import json
import sys
from pathlib import Path

import click

from packer.build.planners import ALGORITHMS
from packer.build.report import MAX_BASELINE_BATCH, evened_line
from packer.core import config as C
from packer.core.buildlock import writing
from packer.core.cache import ENTRY_KINDS
from packer.core.errors import PackerError
from packer.core.executors import EXECUTORS, MAX_WORKERS
from packer.exports import FORMATS
from packer.core.storage import is_url


def _fail_cleanly(fn):
    """PackerErrors print as one line (file:line: what; what to do) and exit 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PackerError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except OSError as e:  # disk full, permissions, a path that is a folder: one line, what to do
            where = e.filename or "packer"
            fix = {errno.ENOSPC: "free disk space or choose another --out",
                   errno.EACCES: "check the permissions of that path", errno.EPERM: "check the permissions of that path",
                   errno.EROFS: "choose a writable --out"}.get(e.errno, "check that path")
            click.echo(f"error: {where}: {e.strerror or e}; {fix}", err=True)
            sys.exit(1)

    return wrapper


class _Finite(click.ParamType):
    """A finite float in [lo, hi] (above: lo excluded): NaN and infinity are refused at parse time."""

    name = "number"

    def __init__(self, lo: float, hi: float, above: bool = False):
        self.lo, self.hi, self.above = lo, hi, above

    def convert(self, value, param, ctx):
        try:
            return C.number(param.opts[-1] if param else "value", float(value), self.lo, self.hi, above=self.above)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        except PackerError as e:
            self.fail(str(e), param, ctx)


def _apply(opts: list):
    """One decorator from a list of click options, applied so that --help lists them in order."""

    def decorate(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


tokenize_options = _apply([
        click.option("--tokenizer", "tokenizer", default="byte", show_default=True,
                     help="tokenizer.json, a folder holding one, a hub name, or 'byte' (built in)."),
        click.option("--kind", type=click.Choice(C.KINDS), default="sft", show_default=True),
        click.option("--template", default="auto", show_default=True,
                     help="alpaca, chatml, none, tokenizer, or a template file: {query} [{response}] for sft, "
                          "a Jinja chat template for chat; for chat also the name of one of the tokenizer's named "
                          "templates (additional_chat_templates/NAME.jinja)."),
        click.option("--query-field", default="query", show_default=True),
        click.option("--response-field", default="response", show_default=True),
        click.option("--messages-field", default="messages", show_default=True),
        click.option("--text-field", default="text", show_default=True),
        click.option("--tools-field", default="tools", show_default=True,
                     help="chat: the record field holding its tool schemas."),
        click.option("--prompt-field", default="prompt", show_default=True, help="preference: the prompt."),
        click.option("--chosen-field", default="chosen", show_default=True),
        click.option("--rejected-field", default="rejected", show_default=True),
        click.option("--completion-field", default="completion", show_default=True,
                     help="preference, unpaired (KTO): the completion."),
        click.option("--label-field", default="label", show_default=True,
                     help="preference, unpaired (KTO): true for a desirable completion."),
        click.option("--preference-format", type=click.Choice(C.PREFERENCE_FORMATS), default="auto",
                     show_default=True, help="preference: explicit, openai, implicit, unpaired, or auto per record."),
        click.option("--chat-format", type=click.Choice(C.CHAT_FORMATS), default="auto", show_default=True,
                     help="chat: openai (messages) or sharegpt (conversations); auto decides per record."),
        click.option("--train-on", default="assistant", show_default=True,
                     help="chat: roles (system,user,assistant,tool) and assistant parts (text,reasoning,tool_calls) "
                          "that carry the loss, e.g. 'text,tool_calls'."),
        click.option("--weight-field", default="weight", show_default=True,
                     help="chat: a message's 0/1 field that overrides --train-on for that turn."),
        click.option("--eos-token", default=None, help="Overrides tokenizer_config.json's eos_token."),
        click.option("--bos/--no-bos", "add_bos", default=None,
                     help="Prepend BOS (default: tokenizer_config.json's add_bos_token)."),
        click.option("--skip-bad", is_flag=True, help="Skip and count bad records instead of stopping."),
        click.option("--max-bad", default="1%", show_default=True,
                     help="With --skip-bad, fail when more records than this are bad: a share (1%) or a count."),
        click.option("--chunk-records", type=click.IntRange(1, C.MAX_CHUNK_RECORDS), default=8192, show_default=True,
                     help="Records per map task (held in memory at once)."),
        click.option("--tokenizer-backend", type=click.Choice(C.TOKENIZER_BACKENDS), default="auto", show_default=True,
                     help="auto: the fast backend (fastokens) where it loads and passes the gate, else tokenizers; "
                          "fast: refuse where it cannot be used; tokenizers: the reference. Shards are identical."),
        click.option("--check-tokens", type=click.Choice(C.CHECK_TOKENS), default="sample", show_default=True,
                     help="Re-encode with tokenizers a sample of every chunk's spans (first 64 + 1%), or all of them."),
        click.option("--max-render-chars", type=click.IntRange(1, 1 << 30), default=C.TokenizeConfig.max_render_chars,
                     show_default=True, help="chat: most characters one record's chat-template rendering may have."),
        click.option("--processor", type=click.Path(exists=True, file_okay=False), default=None,
                     help="chat with image parts: the model's Hugging Face processor folder (preprocessor_config.json, "
                          "tokenizer, chat template); images are sized by it and their placeholders expanded."),
        click.option("--render-budget", type=click.IntRange(1, 1 << 40), default=C.TokenizeConfig.render_budget,
                     show_default=True, help="chat: most work steps one record's rendering may take (~1.5M a second); "
                                             "deterministic, never the clock."),
])

plan_options = _apply([
        click.option("--pack-len", type=click.IntRange(1, C.MAX_PACK_LEN), required=True,
                     help=f"Tokens per pack (at most {C.MAX_PACK_LEN:,})."),
        click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default="ortools", show_default=True,
                     help="ortools: the fewest packs within a work budget; bfd, ffd: one-pass heuristics; nextfit: the "
                          "baseline (packer.build.planners)."),
        click.option("--overlong", type=click.Choice(C.OVERLONG), default=None,
                     help="Over-long examples (default: truncate for sft/chat, split for text)."),
        click.option("--max-segments", type=click.IntRange(1), default=None, help="Cap on examples per pack."),
        click.option("--max-patches", type=click.IntRange(1), default=None,
                     help="Runs with images: most vision patches (sum of t*h*w) a pack may hold."),
        click.option("--cp-size", type=click.IntRange(1), default=1, show_default=True,
                     help="Plan for context parallelism over N ranks: examples padded to multiples of 2N (pack length divisible by 2N)."),
        click.option("--layout", type=click.Choice(C.LAYOUTS), default="best-fit", show_default=True,
                     help="best-fit: whole examples bin-packed; wrapped (--kind text): documents end to end, cut every pack "
                          "length; --kind preference: pairs (best-fit's meaning there: prompt+chosen, prompt+rejected) "
                          "or shared-prompt (the prompt once, then both replies)."),
        click.option("--time-limit", type=_Finite(0, C.MAX_TIME_LIMIT), default=None, help="Work budget of the ortools planner, in deterministic seconds (about wall seconds on 2 cores; the plan never depends on the clock). Default: 1 + 1e-5 per example, at most 300."),
        click.option("--even", type=click.Choice(C.EVEN), default="none", show_default=True,
                     help="After packing, swap examples between packs so every pack's work is near the mean (same packs, "
                          "same examples): tokens, or compute (tokens + attention, by --model-config), so the "
                          "loader's steps cost alike on every rank."),
        click.option("--model-config", type=click.Path(exists=True), default=None,
                     help="--even compute: the model's config.json (or its folder), for its attention cost per token."),
        click.option("--seed", type=click.IntRange(0, C.MAX_SEED), default=0, show_default=True),
])

write_options = _apply([
        click.option("--shard-mb", type=_Finite(0, C.MAX_SHARD_BYTES / 2**20, above=True), default=256, show_default=True,
                     help="Max shard size, MiB."),
        click.option("--shuffle/--no-shuffle", default=True, show_default=True,
                     help="Write packs in a seeded random order."),
])


def quiet_option(fn):
    def set_quiet(ctx, param, value):
        from packer.core import progress
        progress.ENABLED = not value
        return value

    return click.option("--quiet", is_flag=True, expose_value=False, callback=set_quiet, is_eager=True,
                        help="No progress bars (for logs and CI).")(fn)


def _tokenize_config(kw: dict) -> C.TokenizeConfig:
    return C.TokenizeConfig(
        kind=kw["kind"], template=kw["template"], query_field=kw["query_field"],
        response_field=kw["response_field"], messages_field=kw["messages_field"],
        text_field=kw["text_field"], tools_field=kw["tools_field"], chat_format=kw["chat_format"],
        train_on=kw["train_on"], weight_field=kw["weight_field"], eos_token=kw["eos_token"], add_bos=kw["add_bos"],
        skip_bad=kw["skip_bad"], max_bad=kw["max_bad"], chunk_records=kw["chunk_records"],
        max_render_chars=kw["max_render_chars"], render_budget=kw["render_budget"],
        tokenizer_backend=kw["tokenizer_backend"], check_tokens=kw["check_tokens"],
        prompt_field=kw["prompt_field"], chosen_field=kw["chosen_field"], rejected_field=kw["rejected_field"],
        completion_field=kw["completion_field"], label_field=kw["label_field"],
        preference_format=kw["preference_format"], processor=kw.get("processor"))


def _plan_config(kw: dict, kind: str, weights: tuple[float, ...] = ()) -> C.PlanConfig:
    return C.PlanConfig(pack_len=kw["pack_len"], algorithm=kw["algorithm"],
                        overlong=kw["overlong"] or C.default_overlong(kind), seed=kw["seed"],
                        max_segments=kw["max_segments"], time_limit=kw["time_limit"], weights=weights,
                        layout=kw["layout"], cp_size=kw["cp_size"], max_patches=kw.get("max_patches"),
                        even=kw["even"], even_attention=_attention(kw))


def _attention(kw: dict) -> tuple:
    """--model-config as the plan's even_attention (with --even compute; else PlanConfig names the conflict)."""
    if kw.get("model_config") is None:
        return ()
    from packer.core.cost import cost_model, read_model_config

    terms = cost_model(read_model_config(kw["model_config"])).relative()
    if not terms:
        raise click.BadParameter(f"{kw['model_config']}: this model has no attention layers (its cost is per token), "
                                 "so --even compute is --even tokens: pass --even tokens", param_hint="--model-config")
    return terms


def _inputs(data: tuple, mix: str | None) -> list[C.InputSpec]:
    """DATA arguments and/or a mixture file's sources, in that order; at least one."""
    from packer.build.mixture import read_mixture

    specs = [C.InputSpec.parse(d) for d in data] + (read_mixture(mix) if mix else [])
    if not specs:
        raise click.UsageError("give DATA (files, globs or URLs) or --mix FILE")
    return specs


mix_option = click.option("--mix", type=click.Path(dir_okay=False, exists=True), default=None,
                          help="A YAML or JSON mixture file: sources with path, fields, format and weight.")


def _write_config(kw: dict) -> C.WriteConfig:
    return C.WriteConfig(shard_bytes=int(kw["shard_mb"] * 2**20), shuffle=kw["shuffle"], seed=kw["seed"])


@click.group()
def main() -> None:
    """Packer: pack LLM training data offline into memory-mapped shards with cu_seqlens."""


@main.command()
@click.argument("data", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder, or an object store URL (s3://bucket/run: built locally, then committed there).")
@mix_option
@tokenize_options
@plan_options
@write_options
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, show_default=True,
              help="Worker processes for the map steps (0: in this process, tokenizer on all cores).")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
              help="Where the map steps run: this machine, or a Ray cluster (RAY_ADDRESS, else a local one).")
@click.option("--baseline-batch", type=click.IntRange(1, MAX_BASELINE_BATCH), default=8, show_default=True,
              help="Batch size of the padded-to-longest baseline in the report.")
@click.option("--rehash", is_flag=True,
              help="Check the sha256 of every file of the stages a rerun would skip, and rebuild damaged ones.")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True,
              help="eval: every example exactly once (no weights, no drop), packs in order; load with PackedLoader(eval=True).")
@quiet_option
@_fail_cleanly
def pack(data, out, mix, workers, executor, baseline_batch, rehash, split, **kw):
    """Run all stages: DATA -> OUT. DATA: JSON Lines, Parquet or Arrow files, save_to_disk folders, globs
    or URLs (s3://, gs://, hf://), each optionally PATH#query=F,response=F,format=sharegpt,weight=W."""
    from packer.pipeline import pack as run
    from packer.build.report import summary

    tcfg = _tokenize_config(kw)
    report = run(_inputs(data, mix), out, tokenizer=kw["tokenizer"], tokenize_config=tcfg,
                 plan_config=_plan_config(kw, tcfg.kind), write_config=_write_config(kw), workers=workers,
                 executor=executor,
                 baseline_batch=baseline_batch, rehash=rehash, split=split)
    click.echo(summary(report))
    if is_url(out):
        click.echo(f"committed: {out.rstrip('/')}/shards (PackedShards('{out}') streams it by range)\n"
                   f"report: {out.rstrip('/')}/report.html (also .json, .md)")
    else:
        click.echo(f"shards: {Path(out) / 'shards'}\nreport: {Path(out) / 'report.html'} (also .json, .md)")


@main.command("tokenize")
@click.argument("data", nargs=-1)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@mix_option
@tokenize_options
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, show_default=True)
@quiet_option
@_fail_cleanly
def tokenize_cmd(data, out, mix, workers, **kw):
    if is_url(out):
        raise click.UsageError(f"--out {out}: the single-stage commands write local folders; `packer pack --out URL` "
                               "builds a run and commits it to an object store")
    """Stage 1: DATA -> OUT/tokenized (Arrow)."""
    from packer.build.tokenize import tokenize
    from packer.build.load_tokenizer import load_tokenizer

    tcfg = _tokenize_config(kw)
    info = load_tokenizer(kw["tokenizer"], tcfg.eos_token, tcfg.add_bos)
    specs = _inputs(data, mix)
    details: dict = {}
    with writing(Path(out), "packer tokenize"):
        m = tokenize(specs, Path(out) / "tokenized", tcfg, tokenizer=info, workers=workers, details=details)
    if any(s.weight != 1.0 for s in specs):  # weights belong to the plan: say how to give them there
        click.echo(f"weights apply when planning: packer plan {out} --weights "
                   f"{','.join(f'{s.weight:g}' for s in specs)} ...")
    c = m["counts"]
    click.echo(f"{c['examples']:,} examples, {c['tokens']:,} tokens, {c['skipped']:,} skipped "
               f"-> {Path(out) / 'tokenized'}")
    if details.get("backend"):
        checked = f"; {details['spans_checked']:,} of {details['spans']:,} spans checked against " \
                  f"{details['reference']}" if details["backend"] != "tokenizers" else ""
        click.echo(f"tokenizer backend: {details['backend']} {details['version']} ({details['reason']}){checked}")


@main.command("plan")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@plan_options
@click.option("--weights", default=None,
              help="Per input source, comma-separated multipliers on its examples (default: 1 each).")
@_fail_cleanly
def plan_cmd(run, weights, **kw):
    """Stage 2: RUN/tokenized -> RUN/plan."""
    from packer.core.manifest import read_manifest
    from packer.build.plan import plan_stage
    from packer.core.formats.tokenized import FORMAT, VERSION

    tok = read_manifest(Path(run) / "tokenized", FORMAT, VERSION, "run `packer tokenize` first")
    w: tuple[float, ...] = ()
    if weights is not None:
        try:
            w = tuple(float(x) for x in weights.split(","))
        except ValueError:
            raise click.BadParameter(f"'{weights}' is not a comma-separated list of numbers", param_hint="--weights")
    with writing(Path(run), "packer plan"):
        m = plan_stage(Path(run) / "tokenized", Path(run) / "plan", _plan_config(kw, tok["config"]["kind"], w))
    p = m["plan"]
    click.echo(f"{p['num_packs']:,} packs (lower bound {p['lower_bound']:,}), efficiency "
               f"{p['efficiency']:.2%} -> {Path(run) / 'plan'}")
    if evened_line(p.get("even") or {}):
        click.echo(evened_line(p["even"]))


@main.command("write")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@write_options
@click.option("--seed", type=click.IntRange(0, C.MAX_SEED), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=0, show_default=True)
@quiet_option
@_fail_cleanly
def write_cmd(run, workers, **kw):
    """Stage 3: RUN/tokenized + RUN/plan -> RUN/shards (and RUN/report.json)."""
    from packer.build import report as R
    from packer.build.write import write_stage

    with writing(Path(run), "packer write"):
        write_stage(Path(run) / "tokenized", Path(run) / "plan", Path(run) / "shards", _write_config(kw),
                    workers=workers)
        rep = R.compute(run)
        R.write(run, rep)
    click.echo(R.summary(rep))
    click.echo(f"shards: {Path(run) / 'shards'}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--baseline-batch", type=click.IntRange(1, MAX_BASELINE_BATCH), default=8, show_default=True)
@_fail_cleanly
def report(run, baseline_batch):
    """Re-render RUN's report (json, md, html) from its shards, keeping the recorded stage times."""
    from packer.build import report as R
    from packer.core.errors import FormatError

    try:  # keep how the run ran (stage times, tokenizer backend); a missing or damaged report is what this rewrites
        old = R.load(run)
    except FormatError:
        old = {}
    with writing(Path(run), "packer report"):
        rep = R.compute(run, old.get("seconds"), baseline_batch)
        if old.get("tokenizer"):
            rep["tokenizer"] = old["tokenizer"]
        R.write(run, rep)
    click.echo(R.summary(rep))
    click.echo(f"report: {Path(run) / 'report.html'}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "html"]), default="text", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the table here too.")
@_fail_cleanly
def compare(runs, fmt, out):
    """Side-by-side table of the reports of several runs."""
    from packer.build import report as R

    table = R.compare_table(list(zip(R.labels(list(runs)), (R.load(r) for r in runs))), fmt)
    click.echo(table, nl=False)
    if out:
        Path(out).write_text(table, encoding="utf-8")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@_fail_cleanly
def verify(path):
    """Check every stage of a run folder (or a shards folder) in full: seals, every file's sha256 against its
    manifest, the tokenized chunks' and the plan's structure, the stages' lineage, every token and mask value."""
    from packer.core.formats import plan, shards, tokenized

    run = Path(path)
    if not (run / "shards").is_dir() and not (run / "tokenized").is_dir():  # a shards folder on its own
        click.echo(f"ok: shards: {shards.verify(run)}")
        return
    lines, lengths, digest = [], None, None
    if (run / "tokenized").is_dir():
        lines.append(f"tokenized: {tokenized.verify(run / 'tokenized')}")
        lengths = tokenized.read_columns(run / "tokenized", ["length"], verify=False)["length"]
        digest = json.loads((run / "tokenized" / "manifest.json").read_text(encoding="utf-8"))["digest"]
    if (run / "plan").is_dir():
        lines.append(f"plan: {plan.verify(run / 'plan', lengths, digest)}")
    if (run / "shards").is_dir():
        lines.append(f"shards: {shards.verify(run / 'shards')}")  # its lineage names the stages beside it
    click.echo("ok: " + "\n    ".join(lines))


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--pack", "index", type=click.IntRange(0), default=0, show_default=True, help="Which pack (0-based, in file order).")
@click.option("--tokenizer", default=None, help="The run's tokenizer, when its recorded name is not loadable here.")
@click.option("--color/--plain", default=None, help="Trained tokens in green (default when the output is a terminal), "
                                                    "or between [[ and ]].")
@_fail_cleanly
def inspect(path, index, tokenizer, color):
    """Show one pack as text: each segment (example), with the tokens that carry the loss marked."""
    import sys

    import numpy as np

    from packer.core.errors import ConfigError
    from packer.core.formats.shards import ShardSet, check_values
    from packer.core.roles import NAMES as ROLE_NAMES
    from packer.build.load_tokenizer import load_tokenizer

    ds = ShardSet(path)  # checked as every reader checks it (structure; each file's sha256 once per run)
    if not 0 <= index < len(ds):
        raise ConfigError(f"--pack {index}: the run has packs 0..{len(ds) - 1}")
    meta = ds.manifest["tokenizer"]
    info = load_tokenizer(tokenizer or meta["name"] or "byte")
    if meta.get("fingerprint") and info.fingerprint != meta["fingerprint"]:
        raise ConfigError(f"tokenizer '{tokenizer or meta['name']}' is not the one this run was packed with "
                          "(its fingerprint differs); pass --tokenizer with the run's tokenizer")
    tok = info.build()
    color = sys.stdout.isatty() if color is None else color
    on, off = ("\x1b[32m", "\x1b[0m") if color else ("[[", "]]")
    p = ds.arrays(index)
    check_values(p["tokens"], p["loss_mask"], ds.vocab_size, ds.locate(index)[0].path, index)
    tokens, mask = np.asarray(p["tokens"]), np.asarray(p["loss_mask"], bool)
    bounds = np.concatenate([[0], np.cumsum(p["seg_lens"])])
    click.echo(f"pack {index}: {len(tokens)} of {ds.pack_len} tokens, {len(p['seg_lens'])} segments, "
               f"{int(mask.sum())} trained ({on}marked{off})")
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        m = mask[a:b]
        cuts = np.flatnonzero(np.diff(m.astype(np.int8))) + 1
        text = "".join((on if r[0] else "") + tok.decode(t.tolist(), skip_special_tokens=False) + (off if r[0] else "")
                       for t, r in zip(np.split(tokens[a:b], cuts), np.split(m, cuts)))
        images = ""
        if ds.images_meta is not None:  # runs with images: each image's placeholders shown as one marker
            sh, j = ds.locate(index)
            first = int(sh.pack_segment_offsets[j]) + k
            grids, _ = ds.images[ds.shards.index(sh)].of_segments(first, first + 1)
            token = ds.images_meta.get("image_token", "<|image_pad|>")
            for t, h, w in grids.tolist():
                n = t * h * w // ds.images_meta["meta"]["merge_size"] ** 2
                text = text.replace(token * n, f"{token}x{n}[image {t}x{h}x{w} patches]", 1)
            images = f", {len(grids)} images" if len(grids) else ""
        role = int(p["role"][k])
        marked = f" [{ROLE_NAMES[role]}]" if role else ""  # preference runs: prompt, chosen, rejected, ...
        click.echo(f"--- segment {k}: record {int(p['example_index'][k])}{marked}, tokens {int(p['segment_start'][k])}.."
                   f"{int(p['segment_start'][k]) + int(b - a)} of it, {int(m.sum())} trained{images}")
        click.echo(text)


@main.command("export")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), required=True,
              help="megatron (.bin/.idx), hf (datasets save_to_disk, TRL's packed schema) or parquet (one row per pack).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder for the export.")
@click.option("--dtype", type=click.Choice(["uint16", "int32"]), default=None,
              help="Token id type (megatron; default: the smallest that holds the vocabulary).")
@_fail_cleanly
def export_cmd(run, fmt, out, dtype):
    """Export RUN's verified shards for another trainer (see packer.exports)."""
    from packer.exports import export

    summary = export(run, fmt, out, dtype=dtype)
    click.echo(f"{fmt}: {summary['packs']:,} packs -> {out} ({', '.join(summary['files'])})")


@main.group()
def cache() -> None:
    """The user's Packer cache (PACKER_CACHE, else XDG_CACHE_HOME/packer, else ~/.cache/packer)."""


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@cache.command("info")
def cache_info():
    """Where the cache is and what each kind of entry holds."""
    from packer.core.cache import entries
    from packer.core.cache import cache_dir

    found = entries()
    click.echo(f"cache: {cache_dir()}")
    for kind in ENTRY_KINDS:
        mine = [e for e in found if e.kind == kind]
        click.echo(f"  {kind:9} {len(mine):5} entries  {_mb(sum(e.bytes for e in mine)):>14}")


@cache.command("prune")
@click.option("--older-than", "days", type=_Finite(0, 1e6), default=7.0, show_default=True,
              help="Remove entries not used for this many days (0: every entry not being built).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(ENTRY_KINDS),
              help="Only these kinds (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@_fail_cleanly
def cache_prune(days, kinds, dry_run):
    """Remove cache entries not used lately; entries a live builder holds are kept."""
    from packer.core.cache import prune

    removed, busy = prune(days, tuple(kinds) or ENTRY_KINDS, dry_run=dry_run)
    for e in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {e.kind}/{e.path.name} ({_mb(e.bytes)})")
    for e in busy:
        click.echo(f"kept {e.kind}/{e.path.name}: a builder holds its lock")
    click.echo(f"{'would free' if dry_run else 'freed'} {_mb(sum(e.bytes for e in removed))} "
               f"({len(removed)} entries)")


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("-n", "records", type=click.IntRange(1, 10**8), default=2000, show_default=True)
@click.option("--seed", type=click.IntRange(0, C.MAX_SEED), default=0, show_default=True)
def sample(out, records, seed):
    """Write a small synthetic sft data set (fields query, response) to OUT."""
    from packer.build.demo_data import write_sample

    click.echo(f"sample: {write_sample(out, records, seed)}")


if __name__ == "__main__":
    main()
