"""`edgewise chat`: a terminal conversation with an exported model, streamed, keeping the history, switching adapters
with a command. Answers go to stdout; the prompt and notices go to stderr."""
from __future__ import annotations

import sys

from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling

HELP = "commands: /adapter NAME | /adapter none | /adapters | /reset | /exit"


class ChatSession:
    def __init__(self, runtime: Runtime, sampling: Sampling, system: str | None = None, adapter: str | None = None):
        self.runtime, self.sampling, self.adapter = runtime, sampling, adapter
        self.start = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.start)

    def command(self, line: str) -> str:
        """Handle a /command; returns the notice to show."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name == "adapter" and (arg in self.runtime.names or arg == "none"):
            self.adapter = None if arg == "none" else arg
            return f"adapter: {self.adapter or 'none (base model)'}"
        if name == "adapter":
            return f"unknown adapter '{arg}' (loaded: {', '.join(self.runtime.names) or 'none'})"
        if name == "adapters":
            return f"loaded: {', '.join(self.runtime.names) or 'none'}; active: {self.adapter or 'none'}"
        if name == "reset":
            self.messages = list(self.start)
            return "conversation cleared"
        return HELP

    def reply(self, text: str, out) -> str:
        """Stream the answer to `text`, keeping both turns; the oldest turns go when the context is full."""
        self.messages.append({"role": "user", "content": text})
        ids = self.runtime.prompt_ids(self.messages)
        while len(ids) + self.sampling.max_new_tokens > self.runtime.context_length and len(self.messages) > len(
                self.start) + 1:
            del self.messages[len(self.start):len(self.start) + 2]
            ids = self.runtime.prompt_ids(self.messages)
        pieces = []
        for piece in self.runtime.stream(ids, self.adapter, self.sampling):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        answer = "".join(pieces).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def loop(self, inp, out) -> None:
        print(f"edgewise chat ({HELP}); adapter: {self.adapter or 'none'}", file=sys.stderr)
        while True:
            print("> ", end="", file=sys.stderr, flush=True)
            line = inp.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                return
            line = line.strip()
            if line.startswith("/"):
                print(self.command(line), file=sys.stderr)
            elif line:
                self.reply(line, out)
