"""Named tables of the pluggable things (passes, evaluators, quantization algorithms): one way to register an
entry and one way to look one up, with a duplicate name refused and an unknown one answered with what exists."""
from __future__ import annotations

from edgewise.core.errors import EdgewiseError


def _origin(entry) -> str:
    fn = getattr(entry, "fn", entry)
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class Table(dict):
    """name -> entry; an entry with a `fn` is marked on it (`fn.edgewise_plugin`) for the entry-point loader."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry):
        old = self.get(entry.name)
        if old is not None and _origin(old) != _origin(entry):  # the same definition imported again is no clash
            raise EdgewiseError(f"{self.kind} '{entry.name}' is registered twice: {_origin(old)} and {_origin(entry)}")
        self[entry.name] = entry
        fn = getattr(entry, "fn", None)
        if fn is not None:
            fn.edgewise_plugin = entry
            return fn
        return entry

    def lookup(self, name: str, where: str | None = None):
        if name not in self:
            raise EdgewiseError(f"{where + ': ' if where else ''}unknown {self.kind} '{name}'; available: "
                                f"{', '.join(sorted(self)) or 'none'}")
        return self[name]
