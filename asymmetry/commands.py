"""The assistant's commands: ``asymmetry ask``, ``asymmetry chat`` and ``asymmetry generate``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import ClassVar

from asymmetry import defaults
from asymmetry.assistant import Assistant
from asymmetry.engine import AUTO, BARE, sampler_with
from asymmetry.errors import AsymmetryError
from asymmetry.experts import ModelPool, Placement
from asymmetry.sampling import Generator
from asymmetry.sampling.cli import add_generate_arguments, add_sampler_arguments, sampler_config_from_args
from asymmetry.sampling.controls import add_control_tokens
from asymmetry.sampling.grammar import check_constraint

CHAT_HELP = """commands:
  /expert NAME|auto     answer with that expert, or let the router choose (auto)
  /set key=value ...    sampler settings for the next answers, e.g. /set temperature=0.3 max_tokens=128
  /retrieval on|off     use Wikipedia passages or not
  /sources              the sources of the last answer
  /reset                forget the conversation
  /help                 this text
  /quit                 leave (Ctrl-D too); Ctrl-C stops an answer being generated"""


# short names accepted by /set, besides the sampler's own field names
SET_ALIASES = {"cfg": "cfg_scale", "temp": "temperature", "max": "max_tokens", "neg": "negative_prompt"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expert", default="auto", metavar="NAME|auto", help="expert to answer (default: auto, routed)")
    p.add_argument("--no-retrieval", action="store_true", help="answer without Wikipedia passages")
    p.add_argument("--mixture", action="store_true", help="blend the router's top two experts when they are close")
    add_sampler_arguments(p)


def register(sub) -> None:
    p = sub.add_parser(
        "ask",
        help="answer a question with cited Wikipedia sources",
        description="Route the question to an expert, retrieve Wikipedia passages, and answer with numbered sources. "
        "The first run joins the default model's GGUF and builds the default index (progress bars).",
    )
    p.add_argument("question", help="the question")
    p.add_argument("--json", action="store_true", help='print {"answer", "expert", "confidence", "sources", "timings"}')
    p.add_argument("--no-stream", action="store_true", help="print the answer when complete instead of streaming")
    _add_common(p)
    p.set_defaults(func=cmd_ask)

    c = sub.add_parser(
        "chat",
        help="interactive chat with streamed answers and slash commands",
        description="An interactive conversation. Line editing and history (readline). " + CHAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(c)
    c.set_defaults(func=cmd_chat)

    g = sub.add_parser(
        "generate",
        help="generate text with our sampler (CFG, mirostat, grammars, penalties stack)",
        description="Generate a continuation of PROMPT with our decoding loop on the embedded SmolLM2-135M-Instruct "
        "(or --model). CFG runs the prompt and the negative prompt as one batch per step; mirostat, grammar "
        "constraints and penalties stack with it. Control tokens in the prompt (asymmetry controls list) set the "
        "sampler for the text after them; --json reports each segment in stats.segments.",
        epilog='example: asymmetry generate "Name a planet." --chat --json-schema planet.json --mirostat 2 --tau 4 '
        "--cfg-scale 1.5 --negative-prompt 'Answer rudely.' --json",
    )
    add_generate_arguments(g)
    g.set_defaults(func=cmd_generate)

    k = sub.add_parser(
        "controls",
        help="the control tokens that steer the sampler ([controls] in the config)",
        description="Control tokens: special tokens (one per control, added to each base's tokenizer) that set the "
        "sampler's parameters for the text after them (mirostat target, temperature, CFG scale and negative "
        "rubric). Put one in a prompt, e.g. asymmetry generate '<|tau=2|>Once upon a time' --json; the "
        "segments of the text are in stats.segments. Built-ins: recall, explain, formal, plain, tau=X, neg=NAME.",
    )
    ks = k.add_subparsers(dest="controls_command", metavar="ACTION", required=True)
    kl = ks.add_parser("list", help="list every control, its token and the sampler fields it sets")
    kl.add_argument("--json", action="store_true", help="print a JSON list of {name, token, sampler, negative, "
                    "description}")
    kl.set_defaults(func=cmd_controls_list)


def cmd_controls_list(args: argparse.Namespace) -> int:
    """The control vocabulary of the config, one control a line (or JSON)."""
    vocab = args.cfg.controls
    rows = [c.to_dict() for c in vocab.controls]
    if args.json:
        print(json.dumps({"enabled": vocab.enabled, "generate": vocab.generate, "rubrics": vocab.all_rubrics,
                          "controls": rows}, ensure_ascii=False))
        return 0
    if not rows:
        print("controls are disabled ([controls] enabled = false)")
        return 0
    width = max(len(r["token"]) for r in rows)
    for r in rows:
        sets = ", ".join(f"{k}={v}" for k, v in r["sampler"].items())
        if r["negative"] is not None:
            sets += f", negative={r['negative']}"
        print(f"{r['token']:<{width}}  {sets:<42}  {r['description']}")
    print("rubrics (CFG negative prompts): " + "; ".join(f"{k}: {v}" for k, v in vocab.all_rubrics.items()))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Our decoding loop on a bare base model (no routing, no retrieval)."""
    config = sampler_config_from_args(args, args.cfg.sampler)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise AsymmetryError("the prompt is empty: pass some text (or '-' and text on stdin)")
    if args.system and not args.chat:
        raise AsymmetryError("--system needs --chat: add --chat or drop --system")
    check_constraint(config)  # a bad grammar file is reported before the model loads
    base = ModelPool().base(args.model, Placement(quantize=args.cfg.experts.quantize,
                                                  quantize_head=args.cfg.experts.quantize_head))
    controls = args.cfg.controls if args.cfg.controls.enabled else None
    if controls is not None:
        with base.lock:
            add_control_tokens(base.model, base.tokenizer, controls.tokens)
    gen = Generator(base.model, base.tokenizer, lock=base.lock, controls=controls)
    negative = config.negative_prompt
    prompt_in, negative_in = prompt, negative
    if args.chat:
        prompt_in = gen.chat_prompt(prompt, args.system)
        negative_in = gen.chat_prompt(negative, args.system) if negative is not None else None
    if args.json:
        result = gen.generate(prompt_in, config, negative_prompt=negative_in)
        print(json.dumps({"text": result.text, "tokens": result.tokens, "stats": result.stats}, ensure_ascii=False))
        return 0
    for delta in gen.stream(prompt_in, config, negative_prompt=negative_in):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _call_kwargs(args) -> dict:
    kwargs = {
        "expert": args.expert,
        "retrieval": False if args.no_retrieval else None,
        "sampler": sampler_config_from_args(args, args.cfg.sampler),
    }
    if args.mixture:
        kwargs["mixture"] = True
    return kwargs


def _print_sources(answer, out=sys.stdout) -> None:
    conf = "" if answer.confidence is None else f" (confidence {answer.confidence:.2f})"
    print(f"\n-- expert: {answer.expert}{conf}", file=out)
    if not answer.sources:
        print("-- no sources (retrieval off)", file=out)
    for i, src in enumerate(answer.sources, 1):
        url = f"  {src.url}" if src.url else ""
        print(f"[{i}] {src.title}  (score {src.score:.3f}){url}", file=out)


def _check_expert(bot: Assistant, name: str | None) -> None:
    """An unknown expert or a missing or damaged adapter is reported before any model loads (auto: every expert's,
    as the router may pick any)."""
    if name != BARE:
        bot.experts.validate(None if name in (None, AUTO) else name)


def cmd_ask(args) -> int:
    bot = Assistant.load(args.cfg)
    kwargs = _call_kwargs(args)
    _check_expert(bot, args.expert)
    if args.json:  # streamed silently, so Ctrl-C keeps the partial answer, marked interrupted, in the JSON
        stream = bot.stream(args.question, **kwargs)
        interrupted = False
        try:
            for _ in stream:
                pass
        except KeyboardInterrupt:
            if stream.answer is None:
                raise
            interrupted = True
        print(json.dumps(stream.answer.to_dict(), ensure_ascii=False, indent=2))
        return 130 if interrupted else 0
    if args.no_stream:
        answer = bot.ask(args.question, **kwargs)
        print(answer.text.strip())
    else:
        stream = bot.stream(args.question, **kwargs)
        try:
            for delta in stream:
                print(delta, end="", flush=True)
        except KeyboardInterrupt:
            print("\n[interrupted]")
        print()
        answer = stream.answer
    _print_sources(answer)
    return 0


def _parse_value(raw: str):
    low = raw.lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _setup_readline():
    try:
        import readline
    except ImportError:  # not on every platform
        return None
    path = defaults.home() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


class ChatSession:
    """The state of ``asymmetry chat`` and its slash commands (one method each, looked up in ``COMMANDS``)."""

    def __init__(self, bot: Assistant, kwargs: dict):
        self.bot = bot
        self.kwargs = kwargs
        self.chat = bot.chat()

    def run(self, line: str) -> bool:
        """Handle one slash command; False means leave."""
        cmd, _, rest = line.partition(" ")
        handler = self.COMMANDS.get(cmd)
        if handler is None:
            print(f"unknown command {cmd}: /help lists them")
            return True
        try:
            return handler(self, rest.strip()) is not False
        except (AsymmetryError, ValueError, TypeError) as exc:
            print(f"error: {exc}")
            return True

    def quit(self, rest: str) -> bool:
        return False

    def help(self, rest: str) -> None:
        print(CHAT_HELP)

    def reset(self, rest: str) -> None:
        self.chat.reset()
        print("conversation cleared")

    def sources(self, rest: str) -> None:
        if self.chat.last_answer is None:
            print("no answer yet")
        else:
            _print_sources(self.chat.last_answer)

    def expert(self, rest: str) -> None:
        if not rest:
            print(f"expert: {self.kwargs['expert']} (available: auto, {', '.join(self.bot.experts.names())})")
            return
        if rest != "auto":
            self.bot.experts.get(rest)
        self.kwargs["expert"] = rest
        print(f"expert: {rest}")

    def retrieval(self, rest: str) -> None:
        self.kwargs["retrieval"] = None if rest in ("on", "") else False
        print(f"retrieval: {'on' if self.kwargs['retrieval'] is None else 'off'}")

    def set(self, rest: str) -> None:
        if not rest:
            print(self.kwargs["sampler"])
            return
        changes = {}
        for item in rest.split():
            key, eq, value = item.partition("=")
            if not eq:
                raise AsymmetryError(f"/set needs key=value pairs, got {item!r}")
            changes[SET_ALIASES.get(key, key)] = _parse_value(value)
        self.kwargs["sampler"] = sampler_with(self.kwargs["sampler"], changes)
        print("set " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))

    COMMANDS: ClassVar[dict[str, Callable]] = {"/quit": quit, "/exit": quit, "/q": quit, "/help": help, "/reset": reset, "/sources": sources,
                                               "/expert": expert, "/retrieval": retrieval, "/set": set}

    def answer(self, line: str) -> None:
        """Stream the answer to one line; Ctrl-C stops it and the chat goes on."""
        try:
            print("bot> ", end="", flush=True)
            stream = self.chat.stream(line, **self.kwargs)
            for delta in stream:
                print(delta, end="", flush=True)
            print(flush=True)
            answer = stream.answer
            conf = "" if answer.confidence is None else f" {answer.confidence:.2f}"
            print(f"   ({answer.expert}{conf}; {len(answer.sources)} sources, /sources to list)", flush=True)
        except KeyboardInterrupt:
            print("\n[interrupted]", flush=True)
        except AsymmetryError as exc:
            print(f"\nerror: {exc}", flush=True)


def cmd_chat(args) -> int:
    bot = Assistant.load(args.cfg)
    _check_expert(bot, args.expert)
    session = ChatSession(bot, _call_kwargs(args))
    history_file = _setup_readline()
    print("asymmetry chat: ask anything. /help for commands, /quit to leave.", flush=True)
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print()
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not session.run(line):
                    break
                continue
            session.answer(line)
    finally:
        _save_readline(history_file)
    return 0


def _save_readline(history_file) -> None:
    if history_file is None:
        return
    import readline

    try:
        readline.write_history_file(history_file)
    except OSError:
        pass
