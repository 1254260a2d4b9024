"""The assistant's commands: ``asymmetry ask`` and ``asymmetry chat``."""

from __future__ import annotations

import argparse
import json
import sys

from asymmetry.errors import AsymmetryError

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
    from asymmetry.sampling.cli import add_sampler_arguments

    add_sampler_arguments(p)


def register(sub) -> None:
    p = sub.add_parser(
        "ask",
        help="answer a question with cited Wikipedia sources",
        description="Route the question to an expert, retrieve Wikipedia passages, and answer with numbered sources. "
        "The first run converts the default model and builds the default index (progress bars).",
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


def _call_kwargs(args) -> dict:
    from asymmetry.sampling.cli import sampler_config_from_args

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


def cmd_ask(args) -> int:
    from asymmetry.assistant import Assistant

    bot = Assistant.load(args.cfg)
    kwargs = _call_kwargs(args)
    if args.json:
        answer = bot.ask(args.question, **kwargs)
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return 0
    if args.no_stream:
        answer = bot.ask(args.question, **kwargs)
        print(answer.text.strip())
    else:
        try:
            for delta in bot.stream(args.question, **kwargs):
                print(delta, end="", flush=True)
        except KeyboardInterrupt:
            print("\n[interrupted]")
        print()
        answer = bot.last_answer
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
    from asymmetry import defaults

    path = defaults.home() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return path


def cmd_chat(args) -> int:
    from asymmetry.assistant import Assistant, _sampler_with

    bot = Assistant.load(args.cfg)
    kwargs = _call_kwargs(args)
    chat = bot.chat()
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
                cmd, _, rest = line.partition(" ")
                rest = rest.strip()
                try:
                    if cmd in ("/quit", "/exit", "/q"):
                        break
                    elif cmd == "/help":
                        print(CHAT_HELP)
                    elif cmd == "/reset":
                        chat.reset()
                        print("conversation cleared")
                    elif cmd == "/sources":
                        if chat.last_answer is None:
                            print("no answer yet")
                        else:
                            _print_sources(chat.last_answer)
                    elif cmd == "/expert":
                        if not rest:
                            print(f"expert: {kwargs['expert']} (available: auto, {', '.join(bot.experts.names())})")
                        else:
                            if rest != "auto":
                                bot.experts.get(rest)
                            kwargs["expert"] = rest
                            print(f"expert: {rest}")
                    elif cmd == "/retrieval":
                        kwargs["retrieval"] = None if rest in ("on", "") else False
                        print(f"retrieval: {'on' if kwargs['retrieval'] is None else 'off'}")
                    elif cmd == "/set":
                        if not rest:
                            print(kwargs["sampler"])
                            continue
                        changes = {}
                        for item in rest.split():
                            key, eq, value = item.partition("=")
                            if not eq:
                                raise AsymmetryError(f"/set needs key=value pairs, got {item!r}")
                            changes[SET_ALIASES.get(key, key)] = _parse_value(value)
                        kwargs["sampler"] = _sampler_with(kwargs["sampler"], changes)
                        print("set " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
                    else:
                        print(f"unknown command {cmd}: /help lists them")
                except (AsymmetryError, ValueError, TypeError) as exc:
                    print(f"error: {exc}")
                continue
            try:
                print("bot> ", end="", flush=True)
                for delta in chat.stream(line, **kwargs):
                    print(delta, end="", flush=True)
                print(flush=True)
                answer = chat.last_answer
                if answer is not None:
                    conf = "" if answer.confidence is None else f" {answer.confidence:.2f}"
                    print(f"   ({answer.expert}{conf}; {len(answer.sources)} sources, /sources to list)", flush=True)
            except KeyboardInterrupt:
                print("\n[interrupted]", flush=True)
            except AsymmetryError as exc:
                print(f"\nerror: {exc}", flush=True)
    finally:
        if history_file is not None:
            import readline

            try:
                readline.write_history_file(history_file)
            except OSError:
                pass
    return 0
