"""The condensation layer (between the cache and the router): a conversation too long for the model's
context window is shortened, not failed.

Triggers: the prompt's estimated tokens (condense/tokens.py) exceed the window (the model's
``condense.context_window``, else the catalog's for its deployments' upstream model) minus the headroom and
the request's output cap; or the upstream answers with a context-length error (``ContextTooLong``): then
everything that may go goes (the head and the newest ``keep_last`` turns stay) and it is tried once more.

Strategies: ``truncate_middle`` keeps the leading system messages, the first user message (when pinned)
and the newest turns, and drops the oldest others; ``summarize`` replaces what would be dropped by a
summary that the configured summarizer model writes through the same pipeline, kept by the hash of what it
replaced so that the next turn of the conversation reuses it; a summarizer that fails falls back to
``truncate_middle``. An assistant message with tool calls and the tool results answering it are one unit:
never split.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.condense.tokens import message_tokens, prompt_tokens
from relaygate.config import CondenseConfig, Config
from relaygate.core.call import Call, Condensed, Handler, Reply, Route
from relaygate.core.errors import ContextTooLong, GatewayError

if TYPE_CHECKING:
    from relaygate.routing.deployment import Deployment
    from relaygate.routing.router import ModelTable

log = logging.getLogger("relaygate.condense")

HEADER = "x-relaygate-condensed"
TOKENS_HEADER = "x-relaygate-condensed-tokens"
MAX_SUMMARIES = 1024  # summaries remembered (by the hash of what they replaced)
# what a call that asks to be fitted itself (``Call.truncation`` "auto", ``max_prompt_tokens``) gets on a model
# without a ``condense`` config: as OpenAI documents its truncation, the oldest items go, down to the last turn
ASKED = CondenseConfig(keep_last=1, pin_first_user=False)
SUMMARY_INTRO = "Summary of the earlier part of this conversation (condensed by the gateway):\n"
SUMMARIZE_PROMPT = (
    "Summarize the conversation excerpt below for the assistant that continues it. Keep every fact, decision, "
    "name, number, open question and the results of tool calls that later turns may rely on. Write plain "
    "prose, no preamble.")


@dataclass(slots=True)
class CondenseStats:
    condensed: int = 0  # calls condensed before they went out
    retried: int = 0  # calls condensed after an upstream's context-length error, and tried again
    summarized: int = 0
    summaries_reused: int = 0
    summary_failures: int = 0  # summaries that failed: truncate_middle instead
    tokens_saved: int = 0  # estimated


def role_of(m: Any) -> str:
    return str(m.get("role")) if isinstance(m, dict) else ""


def units_of(messages: list[Any], pin_first_user: bool) -> tuple[list[Any], list[list[Any]]]:
    """(the head, always kept: leading system messages and the pinned first user message; the rest as
    units, oldest first). A unit is one message, or an assistant message with tool calls and the tool
    results that follow it."""
    i = 0
    while i < len(messages) and role_of(messages[i]) in ("system", "developer"):
        i += 1
    if pin_first_user and i < len(messages) and role_of(messages[i]) == "user":
        i += 1
    units: list[list[Any]] = []
    for m in messages[i:]:
        if role_of(m) == "tool" and units and isinstance(units[-1][0], dict) and units[-1][0].get("tool_calls"):
            units[-1].append(m)
        else:
            units.append([m])
    return list(messages[:i]), units


def cut_for(head: list[Any], units: list[list[Any]], budget: int, keep_last: int) -> int:
    """How many of the oldest units go so that head + the rest fit ``budget`` (while more than ``keep_last``
    units are left); what is kept after the head then starts with a user turn."""
    sizes = [sum(message_tokens(m) for m in u) for u in units]
    total = sum(message_tokens(m) for m in head) + sum(sizes)
    droppable = max(0, len(units) - keep_last)
    cut = 0
    while cut < droppable and total > budget:
        total -= sizes[cut]
        cut += 1
    # a conversation resumes with a user turn (some providers require it): drop up to the next one
    while 0 < cut < droppable and role_of(units[cut][0]) != "user":
        cut += 1
    return cut


def flat(units: list[list[Any]]) -> list[Any]:
    return [m for u in units for m in u]


def prefix_digests(units: list[list[Any]], summarizer: str, count: int) -> list[str]:
    """The hash of each of the first ``count`` prefixes of ``units`` (one pass: a hash updated unit by
    unit), under which a summary of that prefix is kept."""
    h = hashlib.sha256(summarizer.encode() + b"\0")
    out = []
    for u in units[:count]:
        h.update(orjson.dumps(u, option=orjson.OPT_SORT_KEYS))
        out.append(h.copy().hexdigest())
    return out


def transcript(messages: list[Any]) -> str:
    """The dropped turns as text for the summarizer: one block per message, tool calls as their JSON."""
    lines = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "[non-text part]")) for p in content if isinstance(p, dict))
        text = "" if content is None else str(content)
        if m.get("tool_calls"):
            text += ("\n" if text else "") + "tool calls: " + orjson.dumps(m["tool_calls"]).decode()
        lines.append(f"{role_of(m)}: {text}")
    return "\n\n".join(lines)


def output_cap(body: dict[str, Any]) -> int:
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return cap if type(cap) is int and cap > 0 else 0


class CondenseLayer:
    """See the module docstring. ``summarize`` is the pipeline a summary call goes through; ``window`` gives a
    deployment's context window from the catalog (None when unknown)."""

    def __init__(self, next_handler: Handler, config: Config, table: ModelTable,
                 window: Callable[[Deployment], int | None], summarize: Handler) -> None:
        self.next = next_handler
        self.table = table
        self.window = window
        self.summarize = summarize
        self.models: dict[str, CondenseConfig] = {m.name: m.condense for m in config.models
                                                  if m.condense is not None}
        self.summaries: OrderedDict[str, str] = OrderedDict()
        self.stats = CondenseStats()

    def _window(self, settings: CondenseConfig, deps: list[Deployment]) -> int | None:
        if settings.context_window is not None:
            return settings.context_window
        known = [w for w in map(self.window, deps) if w]
        return min(known) if known else None  # the smallest: the call may go to any of them

    async def __call__(self, call: Call) -> Reply:
        if call.route is not Route.CHAT or call.truncation == "disabled":
            return await self.next(call)  # (disabled: the client wants the context error, as OpenAI gives it)
        deps = call.deployments
        if deps is None:
            deps = call.deployments = self.table.resolve(call)
        settings = self.models.get(deps[0].model_name)
        cap = call.max_prompt_tokens
        if settings is None:
            if call.truncation != "auto" and cap is None:
                return await self.next(call)  # before the body is read: a native call keeps its fast path
            settings = ASKED
        if not isinstance(call.body.get("messages"), list):
            return await self.next(call)
        done: Condensed | None = None
        window = self._window(settings, deps)
        if window is not None or cap is not None:
            budget = window - settings.headroom - output_cap(call.body) if window is not None else cap
            if cap is not None and budget is not None:
                budget = min(budget, cap)
            assert budget is not None
            before = prompt_tokens(call.body)
            if before > budget:
                done = await self._traced(call, settings, budget, before)
                if done is not None:
                    self.stats.condensed += 1
        try:
            reply = await self.next(call)
        except ContextTooLong:
            # the estimate (or the window) was wrong, and by how much is unknown: the one more try drops all
            # that may go (head and the newest turns are left; with summarize, a summary of the rest)
            before = prompt_tokens(call.body)
            again = await self._traced(call, settings, 0, before)
            if again is None:  # nothing left to drop: the upstream's error stands
                raise
            self.stats.retried += 1
            again.retried = True
            if done is not None:  # condensed twice: the row tells from the conversation as sent to the end
                again.messages_before, again.tokens_before = done.messages_before, done.tokens_before
                again.dropped += done.dropped
                again.summarized += done.summarized
                again.summary_reused = again.summary_reused or done.summary_reused
            done = again  # (_condense made it the call's condensed already)
            call.deployment = None
            reply = await self.next(call)
        if done is not None:
            reply.headers[HEADER] = done.strategy
            reply.headers[TOKENS_HEADER] = str(max(0, done.tokens_before - done.tokens_after))
        return reply

    async def _traced(self, call: Call, settings: CondenseConfig, budget: int, before: int) -> Condensed | None:
        """``_condense`` inside a ``relaygate.condense`` span when the call is traced: the strategy used and
        the tokens saved, or ``nothing`` when nothing could be dropped."""
        trace = call.trace
        if trace is None:
            return await self._condense(call, settings, budget, before)
        span = trace.step("relaygate.condense")
        span.set_attribute("relaygate.condense.tokens_before", before)
        try:
            done = await self._condense(call, settings, budget, before)
        except BaseException as e:
            span.set_attribute("error.type", getattr(e, "kind", "internal"))
            span.end()
            raise
        if done is None:
            span.set_attribute("relaygate.condense.strategy", "nothing")
        else:
            span.set_attribute("relaygate.condense.strategy", done.strategy)
            span.set_attribute("relaygate.condense.tokens_saved", max(0, before - done.tokens_after))
        span.end()
        return done

    async def _condense(self, call: Call, settings: CondenseConfig, budget: int, before: int) -> Condensed | None:
        """Shorten the call's messages to ``budget`` estimated tokens: what was done (also left on the call
        for its log row), or None when nothing can be dropped."""
        original = call.body["messages"]
        head, units = units_of(original, settings.pin_first_user)
        summarized: tuple[list[Any], int, bool] | None = None
        if settings.strategy == "summarize":
            summarized = await self._summarized(call, settings, head, units, budget)
        if summarized is not None:
            messages, replaced, reused = summarized
            done = Condensed("summarize", False, len(original), len(messages), 0, replaced, reused, before, 0)
        else:
            cut = cut_for(head, units, budget, settings.keep_last)
            if cut == 0:
                return None
            messages = head + flat(units[cut:])
            done = Condensed("truncate_middle", False, len(original), len(messages), len(original) - len(messages),
                             0, False, before, 0)
        # a new body: the cache layer above keyed the call on what the client sent
        call.body = {**call.body, "messages": messages}
        call.anthropic_request = None  # an Anthropic deployment now sends the condensed (translated) body
        call.native = None  # likewise a Gemini, Cohere or Bedrock deployment
        call.responses_request = None  # and a native Responses deployment too (it answers as chat then)
        done.tokens_after = prompt_tokens(call.body)
        self.stats.tokens_saved += max(0, before - done.tokens_after)
        call.condensed = done
        return done

    async def _summarized(self, call: Call, settings: CondenseConfig, head: list[Any], units: list[list[Any]],
                          budget: int) -> tuple[list[Any], int, bool] | None:
        """The messages with the oldest units replaced by a summary (and how many messages it replaced,
        whether it was reused): one made for an earlier turn of the same conversation when it still fits
        (the longest such), else a new one of the units that must go for the conversation to fit half the
        budget (room for the next turns to reuse it). None when nothing can go or the summarizer failed."""
        assert settings.summarizer is not None
        droppable = max(0, len(units) - settings.keep_last)
        digests = prefix_digests(units, settings.summarizer, droppable)
        head_tokens = sum(message_tokens(m) for m in head)
        sizes = [sum(message_tokens(m) for m in u) for u in units]
        for j in range(droppable, 0, -1):
            known = self.summaries.get(digests[j - 1])
            if known is not None and head_tokens + message_tokens(summary_message(known)) + sum(sizes[j:]) <= budget:
                self.summaries.move_to_end(digests[j - 1])
                self.stats.summaries_reused += 1
                return with_summary(head, known, units[j:]), len(flat(units[:j])), True
        cut = cut_for(head, units, budget // 2, settings.keep_last)
        if cut == 0:
            return None
        summary = await self._summary(call, settings, flat(units[:cut]))
        if summary is None:
            return None
        self.summaries[digests[cut - 1]] = summary
        if len(self.summaries) > MAX_SUMMARIES:
            self.summaries.popitem(last=False)
        return with_summary(head, summary, units[cut:]), len(flat(units[:cut])), False

    async def _summary(self, call: Call, settings: CondenseConfig, dropped: list[Any]) -> str | None:
        """A summary of ``dropped`` by the summarizer model, through the pipeline; None on failure."""
        assert settings.summarizer is not None
        body = {"model": settings.summarizer, "temperature": 0, "max_tokens": settings.summary_max_tokens,
                "messages": [{"role": "system", "content": SUMMARIZE_PROMPT},
                             {"role": "user", "content": transcript(dropped)}]}
        sub = Call(id=call.id + "-summary", route=Route.CHAT, model=settings.summarizer, body=body,
                   client_ip=call.client_ip, deadline=call.deadline, key=call.key)
        reply: Reply | None = None
        try:
            reply = await self.summarize(sub)
            if reply.stream is not None or reply.body is None:
                raise ValueError("the summarizer did not answer whole")
            text = orjson.loads(reply.body)["choices"][0]["message"]["content"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the summary is empty")
        except (GatewayError, ValueError, KeyError, IndexError, TypeError) as e:
            self.stats.summary_failures += 1
            log.warning("condense: the summarizer %s failed (%s); truncating instead", settings.summarizer,
                        e.message if isinstance(e, GatewayError) else type(e).__name__)
            if reply is not None:
                reply.finish(e if isinstance(e, GatewayError) else None)
            return None
        reply.finish(None)  # delivered (to us): its log row, limits and statistics are settled
        self.stats.summarized += 1
        return text


def summary_message(summary: str) -> dict[str, Any]:
    return {"role": "system", "content": SUMMARY_INTRO + summary}


def with_summary(head: list[Any], summary: str, kept: list[list[Any]]) -> list[Any]:
    """The leading system messages, the summary (as one more system message), the pinned first user
    message, the units kept."""
    lead = [m for m in head if role_of(m) in ("system", "developer")]
    return lead + [summary_message(summary)] + head[len(lead):] + flat(kept)
