"""Chat templates: rendered as transformers renders them, within limits, and the loss mask they imply.

Rendering follows transformers' `apply_chat_template` (5.x) exactly, so the tokens are what the model
was trained to read: the same Jinja sandbox and options (trim_blocks, lstrip_blocks, loopcontrols),
the same globals (raise_exception, tojson without HTML escaping, a restricted dict and namespace), the
same variables (messages with None-valued keys dropped and reasoning under reasoning_content and
thinking; tools as given or None; documents None; the tokenizer's named special tokens) and the same
choice among a tokenizer's named templates (tool_use for a record with tools, else default).
`strftime_now` (today's date) is refused: shards never depend on the day they are built.

Every record's rendering has two limits, both deterministic (never the clock): `max_chars` of output
and a `budget` of work steps (each attribute read, item read, call and range item costs a step), so a
template that loops without end or builds a huge string stops with an InputError naming the record,
which --skip-bad counts like any bad record.

The loss mask: for turn i, its region starts where the template's rendering of messages[:i] (with
the generation prompt, for an assistant turn) ends and stops where the rendering of messages[:i+1]
ends. Rendering every prefix costs O(turns^2); a record of more than EXACT_TURNS turns is masked in
O(turns) instead when the template is local (each turn rendered as its header, its content and its
closing, the same for every turn of a role): the first EXACT_TURNS // 2 turns are rendered prefix by
prefix, which gives each role's header and closing exactly; one rendering with every content wrapped
in markers then places every later turn, each boundary checked to be that role's header and closing;
and the last trained turn is rendered prefix by prefix again and must agree. Anything that does not
check out falls back to every prefix (within the work budget).
"""

from __future__ import annotations

import json
import re
import numpy as np

from packer.build.chats import PARTS, Chat
from packer.core.errors import ConfigError

Span = tuple[str, bool]
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
MAX_RENDER_CHARS = 1 << 24
"""Default most characters one record's rendering may have (16,777,216: over 4M tokens of text)."""
RENDER_BUDGET = 20_000_000
"""Default most work steps one record's renderings may take together (~1.5M steps a second: ~13 s of Jinja)."""
EXACT_TURNS = 16
"""Records of up to this many turns are masked by rendering every prefix (exact whatever the template)."""
_OPEN, _CLOSE, _END = "\uf8f0", "\uf8f1", "\uf8f2"  # private-use code points: content markers
_MARK = re.compile(f"([{_OPEN}{_CLOSE}])(\\d+){_END}")


class RenderLimit(Exception):
    """A record's rendering went over max_chars or the work budget."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else f"{type(e).__name__} with no message"


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """tojson as transformers defines it for chat templates (no HTML escaping, keys in their order)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def template_message(m: dict) -> dict:
    """A message as transformers hands it to the template: keys whose value is None dropped, and the
    reasoning under both names templates read (reasoning_content, thinking)."""
    m = {k: v for k, v in m.items() if v is not None}
    reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
    if reasoning is not None:
        m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
    return m


def choose(templates: dict[str, str], name: str | None, has_tools: bool) -> str:
    """The name of the template transformers' get_chat_template picks: `name` when given, else tool_use
    for a record with tools (when there is one), else default."""
    if name is not None:
        if name not in templates:
            raise ConfigError(f"the tokenizer has no chat template named '{name}'; it has {', '.join(sorted(templates))}")
        return name
    if has_tools and "tool_use" in templates:
        return "tool_use"
    if "default" in templates:
        return "default"
    raise ConfigError(f"the tokenizer has several chat templates ({', '.join(sorted(templates))}) and none is "
                      "'default'; pass --template NAME")


def as_templates(chat_template: str | dict[str, str] | None) -> dict[str, str]:
    """A tokenizer's chat template(s) by name: one template is 'default'."""
    if chat_template is None:
        return {}
    return dict(chat_template) if isinstance(chat_template, dict) else {"default": chat_template}


def _environment(meter: list[int], max_chars: int):
    """A sandbox like transformers' (see the module docstring) that charges every step to `meter`."""
    import jinja2
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

    def charge(n: int) -> None:
        meter[0] -= n
        if meter[0] < 0:
            raise RenderLimit("the rendering went over its work budget (a template that loops without end, or "
                              "a record too long for it); raise --render-budget if the record is right")

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            charge(1)
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            charge(1)
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            charge(1)
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):
            sized = (str, list, tuple)
            if operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise RenderLimit(f"the template raises a number to the power {right}")
            if operator == "*" and isinstance(left, sized) != isinstance(right, sized):
                seq, times = (left, right) if isinstance(left, sized) else (right, left)
                if isinstance(times, int) and len(seq) * times > max_chars:
                    raise RenderLimit(f"the template repeats a value {times:,} times, over --max-render-chars")
            if operator == "+" and isinstance(left, sized) and isinstance(right, sized) and \
                    len(left) + len(right) > max_chars:  # checked before the value exists
                raise RenderLimit(f"the template builds a value over {max_chars:,} characters (--max-render-chars)")
            result = super().call_binop(context, operator, left, right)
            charge(1 + (len(result) >> 12 if isinstance(result, (str, list, tuple)) else 0))
            return result

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(fmt: str) -> str:
        raise ConfigError("the chat template calls strftime_now (today's date), which would make the shards "
                          "depend on the day they are built; pass a template that takes date_string, or edit it")

    def counted_range(*args: int) -> range:
        r = range(*args)
        if len(r) > MAX_RANGE:  # as jinja's sandbox (and so transformers) refuses it
            raise OverflowError(f"Range too big. The sandbox blocks ranges larger than MAX_RANGE ({MAX_RANGE}).")
        charge(len(r))
        return r

    class TemplateDict:  # as transformers: dict() and dict.fromkeys, no attribute access beyond them
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # as transformers: no underscore-prefixed names
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                                    f"but got {name!r}. Please rename the attribute.")

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, range=counted_range,
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env


class ChatTemplate:
    """One Jinja chat template (or a tokenizer's named set), compiled once, rendered within limits."""

    def __init__(self, templates: dict[str, str], special: dict[str, str], *, name: str | None = None,
                 max_chars: int = MAX_RENDER_CHARS, budget: int = RENDER_BUDGET):
        self._meter = [budget]
        self._budget, self._max_chars, self._name = budget, max_chars, name
        env = _environment(self._meter, max_chars)
        self._compiled = {k: env.from_string(v) for k, v in templates.items()}
        self._templates = templates
        choose(templates, name, False)  # an unknown name, or several templates and no default: refused now
        self._special = {k: v for k, v in special.items() if k in SPECIAL_TOKENS and v}

    def start_record(self) -> None:
        """A new record: its renderings share a fresh work budget."""
        self._meter[0] = self._budget

    def render(self, messages: list[dict], tools: list | None, gen: bool) -> str:
        """The template's text for these messages (as transformers' apply_chat_template(tokenize=False))."""
        key = choose(self._templates, self._name, tools is not None)
        out, size = [], 0
        # Streamed, so a template that writes without end stops at max_chars, not at the memory limit.
        for piece in self._compiled[key].generate(
                **self._special, messages=[template_message(m) for m in messages], tools=tools, documents=None,
                add_generation_prompt=gen):
            size += len(piece)
            if size > self._max_chars:
                raise RenderLimit(f"the rendering is over {self._max_chars:,} characters (--max-render-chars)")
            out.append(piece)
        return "".join(out)

    # The loss mask -------------------------------------------------------------------------------------

    def spans(self, chat: Chat, trained: list[bool], parts: frozenset[str]) -> list[Span]:
        """The record's text as spans, trained where the turns are (see the module docstring)."""
        self.start_record()
        full = self.render(chat.messages, chat.tools, False)
        marks = None
        if len(chat.messages) > EXACT_TURNS and parts == frozenset(PARTS):
            marks = self._linear_marks(chat, trained, full)
        if marks is None:
            marks = []
            for i, train in enumerate(trained):
                if train:
                    start, end = self._turn(chat, full, i)
                    if chat.messages[i]["role"] == "assistant" and parts != frozenset(PARTS):
                        marks.extend(self._parts(chat, i, full, start, end, parts))
                    else:
                        marks.append((start, end))
        out: list[Span] = []
        done = 0
        for a, b in marks:  # regions come in conversation order and never overlap
            if a > done:
                out.append((full[done:a], False))
            if b > max(a, done):
                out.append((full[max(a, done):b], True))
            done = max(done, b)
        if done < len(full):
            out.append((full[done:], False))
        return [s for s in out if s[0]]

    def _turn(self, chat: Chat, full: str, i: int) -> tuple[int, int]:
        """Turn i's region [start, end) in `full`, from renderings of messages[:i] and messages[:i+1]."""
        msgs, tools, m = chat.messages, chat.tools, chat.messages[i]
        before = self.render(msgs[:i], tools, False) if i else ""
        start = _lcp(full, before)
        if m["role"] == "assistant":
            head = self.render(msgs[:i], tools, True)
            gen = head[len(before):] if head.startswith(before) else ""
            if full.startswith(head):
                start = len(head)
            elif gen and full.find(gen, start) >= 0:
                start = full.find(gen, start) + len(gen)
            else:
                raise ConfigError(f"the chat template does not render turn {i} ({m['role']}) after its "
                                  "generation prompt; pass --template chatml or a template file")
        alone = self.render(msgs[: i + 1], tools, False)  # the turn rendered as the last one
        if full.startswith(alone):
            end = len(alone)
        else:  # rendered otherwise when later turns follow: reasoning dropped, or a different close
            k = _dropped_prefix_match(alone[start:], full, start) if alone.startswith(full[:start]) else 0
            end = start + k if k else _lcp(full, alone)
        if end <= start:
            raise ConfigError(f"the chat template renders turn {i} ({m['role']}) differently when later turns "
                              "follow (it rewrites history), so its loss mask cannot be placed; pass "
                              "--template FILE.jinja with a template that does not, or --train-on without it")
        return start, end

    def _linear_marks(self, chat: Chat, trained: list[bool], full: str) -> list[tuple[int, int]] | None:
        """Every trained turn's region in O(turns) renderings' work (module docstring), or None when the
        template or the record does not allow it (the caller then renders every prefix)."""
        msgs, tools, n = chat.messages, chat.tools, len(chat.messages)
        head = EXACT_TURNS // 2
        texts = [m.get("content") for m in msgs]
        if not all(isinstance(t, str) and t and not re.search(f"[{_OPEN}{_CLOSE}{_END}]", t) for t in texts):
            return None  # every turn needs a content to carry its markers
        bounds = [0]  # B_k: where turn k starts (the end of the rendering of messages[:k])
        for k in range(1, head + 1):
            prefix = self.render(msgs[:k], tools, False)
            if not full.startswith(prefix):
                return None
            bounds.append(len(prefix))
        found = self._contents(msgs, tools, full)
        if found is None:
            return None
        c, d = found
        header: dict[str, str] = {}
        closing: dict[str, str] = {}
        # Each role's header and closing, exactly, from the prefix renderings. The first turns may be rendered
        # their own way (a preamble, a system prompt taken out of the loop, loop.first): headers are learned
        # from turn 2 on; every later boundary is then checked against them.
        for k in range(head):
            role = msgs[k]["role"]
            for table, piece in ((closing, full[d[k]:bounds[k + 1]]), (header, full[bounds[k]:c[k]] if k >= 2 else None)):
                if piece is not None and table.setdefault(role, piece) != piece:
                    return None  # a role rendered two ways: not local
        for k in range(head + 1, n):  # every later boundary must be the known closing and header
            prev, role = msgs[k - 1]["role"], msgs[k]["role"]
            if prev not in closing or role not in header or full[d[k - 1]:c[k]] != closing[prev] + header[role]:
                return None
            bounds.append(d[k - 1] + len(closing[prev]))
        last = msgs[-1]["role"]
        bounds.append(d[-1] + len(closing[last]) if last in closing and full[d[-1]:] == closing[last] else len(full))
        gen = None
        for k in range(1, head):
            if msgs[k]["role"] == "assistant":
                before = self.render(msgs[:k], tools, False)
                prompt = self.render(msgs[:k], tools, True)
                if not prompt.startswith(before):
                    return None
                gen = prompt[len(before):]
                break
        marks = []
        turns = [i for i in range(n) if trained[i]]
        for i in turns:
            if i < head:
                marks.append(self._turn(chat, full, i))
                continue
            start = bounds[i]
            if msgs[i]["role"] == "assistant":
                if gen is None or not header["assistant"].startswith(gen):
                    return None
                start += len(gen)
            marks.append((start, bounds[i + 1]))
        if turns and turns[-1] >= head and marks[-1] != self._turn(chat, full, turns[-1]):
            return None  # the last trained turn, rendered prefix by prefix, must agree
        return marks

    def _contents(self, msgs: list[dict], tools: list | None, full: str) -> tuple[list[int], list[int]] | None:
        """Where each message's content lies in `full`: one rendering with every content between markers,
        which must give `full` once the markers are removed. The markers go around the whole content, or
        (for a template that trims contents) around its stripped core; None when neither gives `full`."""
        n = len(msgs)
        for around in (lambda s: s, str.strip):
            def marked(k: int, m: dict) -> dict:
                s = m["content"]
                core = around(s)
                lead = s[:len(s) - len(s.lstrip())] if core is not s else ""
                return dict(m, content=f"{lead}{_OPEN}{k}{_END}{core}{_CLOSE}{k}{_END}{s[len(lead) + len(core):]}")

            text, at, clean, pos = self.render([marked(k, m) for k, m in enumerate(msgs)], tools, False), {}, [], 0
            for match in _MARK.finditer(text):
                clean.append(text[pos:match.start()])
                at.setdefault((match.group(1), int(match.group(2))), []).append(sum(map(len, clean)))
                pos = match.end()
            clean.append(text[pos:])
            if "".join(clean) != full or len(at) != 2 * n or any(len(v) != 1 for v in at.values()):
                continue  # the template changed, repeated or dropped some content: markers cannot place turns
            c = [at[(_OPEN, k)][0] for k in range(n)]
            d = [at[(_CLOSE, k)][0] for k in range(n)]
            if all(c[k] <= d[k] and (k == 0 or d[k - 1] <= c[k]) for k in range(n)):
                return c, d
        return None

    def _parts(self, chat: Chat, i: int, full: str, start: int, end: int, parts: frozenset[str]
               ) -> list[tuple[int, int]]:
        """The trained sub-regions of assistant turn i: [start, end) less the parts not trained."""
        m = chat.messages[i]
        region = {"text": (start, end)}
        tool_at = end
        if "tool_calls" in m:
            without = self.render(_without(chat.messages, i, "tool_calls"), chat.tools, False)
            tool_at = min(max(_lcp(full, without), start), end)
            region["tool_calls"] = (tool_at, end)
        if m.get("reasoning_content"):
            without = self.render(_without(chat.messages, i, "reasoning_content"), chat.tools, False)
            a, b = _lcp(full, without), len(full) - _lcs(full, without)
            if b > a:  # the template renders this turn's reasoning (some drop it): it lies in [a, b)
                region["reasoning"] = (max(a, start), min(b, tool_at))
        elif isinstance(m.get("content"), str) and "<think>" in m["content"] and "</think>" in m["content"]:
            a = full.find("<think>", start, tool_at)
            b = full.find("</think>", max(a, start), tool_at)
            if a >= 0 and b >= 0:  # reasoning written inline and rendered verbatim
                region["reasoning"] = (a, b + len("</think>"))
        keep = np.zeros(end - start, dtype=bool)
        keep[:] = "text" in parts
        for part in ("reasoning", "tool_calls"):
            if part in region:
                a, b = region[part]
                keep[max(a, start) - start:max(b, start) - start] = part in parts
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        return [(start + int(a), start + int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _without(msgs: list[dict], i: int, key: str) -> list[dict]:
    m = {k: v for k, v in msgs[i].items() if k != key}
    if key == "tool_calls" and m.get("content") is None:
        m["content"] = ""
    if key == "reasoning_content":
        for other in REASONING_FIELDS:
            m.pop(other, None)
    return msgs[:i] + [m] + msgs[i + 1:]


def _lcp(a: str, b: str) -> int:
    """Length of the longest common prefix: a binary search over slice comparisons (each in C), so a few
    dozen steps, not one Python step per character as os.path.commonprefix takes (5 us against 74 us for a
    1,500-character common prefix)."""
    return _common(a, b, lambda s, k: s[:k])


def _lcs(a: str, b: str) -> int:
    """Length of the longest common suffix."""
    return _common(a, b, lambda s, k: s[len(s) - k:])


def _common(a: str, b: str, part) -> int:
    """The largest k with part(a, k) == part(b, k), where equal parts of length k imply equal parts of any
    shorter length (prefixes, suffixes)."""
    lo, hi = 0, min(len(a), len(b))
    if part(a, hi) == part(b, hi):
        return hi
    while hi - lo > 1:  # part(a, lo) == part(b, lo), part(a, hi) != part(b, hi)
        mid = (lo + hi) // 2
        if part(a, mid) == part(b, mid):
            lo = mid
        else:
            hi = mid
    return lo


def _dropped_prefix_match(turn: str, full: str, start: int) -> int:
    """How much of `full` from `start` is a suffix of `turn` (the turn as rendered when it is last).

    Templates that drop an earlier turn's reasoning once later turns follow render that turn as a
    suffix of its last-turn form (`<think>R</think>C<|im_end|>` becomes `C<|im_end|>`): the longest
    such suffix that `full` continues with is the turn as the conversation renders it. 0: none.
    """
    first = full[start:start + 1]
    p = turn.find(first) if first else -1
    while p >= 0:  # candidates are the places the first character recurs: few in one turn
        if full.startswith(turn[p:], start):
            return len(turn) - p
        p = turn.find(first, p + 1)
    return 0


def render_error(e: BaseException) -> str:
    """What a failed rendering says in the record's InputError (the template's own message, if any)."""
    if isinstance(e, RenderLimit):
        return str(e)
    if type(e).__name__ == "TemplateError":
        return f"rejected by the chat template: {_first_line(e)}"
    if isinstance(e, RecursionError):
        return "the chat template recursed too deep on this record"
    return f"the chat template failed on this record ({type(e).__name__}: {_first_line(e)})"


__all__ = ["ChatTemplate", "MAX_RENDER_CHARS", "RENDER_BUDGET", "EXACT_TURNS", "RenderLimit", "as_templates", "choose",
           "render_error", "template_message"]
