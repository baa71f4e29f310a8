"""Tools an agent may call through its context, each with its side effect and optional simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tachograph.errors import UnknownToolError

SideEffect = Literal["none", "read", "write"]
ToolFn = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Tool:
    """A named tool: the live function, what it touches, and a side-effect-free stand-in."""

    name: str
    fn: ToolFn
    side_effect: SideEffect
    simulator: ToolFn | None = None

    def replay_stand_in(self) -> ToolFn | None:
        """What a replay may call after diverging: the simulator, or a pure tool itself."""
        if self.simulator is not None:
            return self.simulator
        return self.fn if self.side_effect == "none" else None


class ToolRegistry:
    """The tools of one agent, by name."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(
        self,
        name: str,
        fn: ToolFn,
        side_effect: SideEffect,
        simulator: ToolFn | None = None,
    ) -> Tool:
        """Add a tool; ``simulator`` must never touch the outside world."""
        if side_effect not in ("none", "read", "write"):
            raise ValueError(f"side_effect must be none, read or write, not {side_effect!r}")
        tool = Tool(name, fn, side_effect, simulator)
        self._tools[name] = tool
        return tool

    def tool(
        self, name: str, side_effect: SideEffect, simulator: ToolFn | None = None
    ) -> Callable[[ToolFn], ToolFn]:
        """Decorator form of :meth:`register`."""

        def wrap(fn: ToolFn) -> ToolFn:
            self.register(name, fn, side_effect, simulator)
            return fn

        return wrap

    def get(self, name: str) -> Tool:
        """The tool named ``name`` (raises UnknownToolError listing the registered ones)."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(
                f"tool {name!r} is not registered; registered: {', '.join(sorted(self._tools)) or 'none'}"
            ) from None

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())
