"""Loading agent code by ``module:function`` reference, with its tools, prompts and identity."""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tachograph.errors import AgentLoadError, PromptError
from tachograph.tools import ToolRegistry

if TYPE_CHECKING:
    from tachograph.context import Agent


@dataclass(frozen=True)
class AgentSpec:
    """An agent function plus what its module declares: ``TOOLS``, ``PROMPTS``, ``WORKFLOW``, ``AGENT``."""

    ref: str
    fn: Agent
    tools: ToolRegistry
    prompts: Mapping[str, str]
    workflow: str | None = None
    identity: Mapping[str, str] = field(default_factory=dict)
    prompt_overrides: Mapping[str, str] = field(default_factory=dict)

    def with_prompts(self, overrides: Mapping[str, str]) -> AgentSpec:
        """The same agent with some prompts replaced (each must already be registered)."""
        unknown = sorted(set(overrides) - set(self.prompts))
        if unknown:
            raise PromptError(
                f"{self.ref} has no prompt named {', '.join(map(repr, unknown))}; "
                f"its prompts: {', '.join(sorted(self.prompts)) or 'none'}"
            )
        return replace(self, prompts={**self.prompts, **overrides}, prompt_overrides=dict(overrides))


def load_agent(ref: str) -> AgentSpec:
    """Import ``module:function`` and the tools and prompts its module declares."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise AgentLoadError(f"--agent must look like module:function, got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AgentLoadError(f"cannot import {module_name!r} for agent {ref!r}: {e}") from e
    fn: Any = getattr(module, attr, None)
    if not callable(fn):
        raise AgentLoadError(f"{module_name} has no function {attr!r}")
    return _declared(ref, fn, module)


def read_prompt_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``NAME=FILE`` pairs into {name: file text}."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise PromptError(f"--prompt must look like NAME=FILE, got {pair!r}")
        try:
            out[name] = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise PromptError(f"cannot read prompt file {file!r} for {name!r}: {e.strerror}") from e
    return out


def prompt_digest(text: str) -> str:
    """A short content hash naming a prompt version in labels."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def agent_spec(agent: str | Any) -> AgentSpec:
    """An :class:`AgentSpec` from a ``module:function`` reference, an agent function (its module's
    ``TOOLS``, ``PROMPTS``, ``WORKFLOW`` and ``AGENT`` come with it), or an AgentSpec."""
    if isinstance(agent, AgentSpec):
        return agent
    if isinstance(agent, str):
        return load_agent(agent)
    if not callable(agent):
        raise AgentLoadError(f"an agent is a function, a module:function reference or an AgentSpec, not {agent!r}")
    module_name = getattr(agent, "__module__", None) or "__main__"
    if module_name == "__main__":  # run as `python -m package.module`: name it as replay will import it
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main_spec is not None and main_spec.name:
            module_name = main_spec.name
    module = sys.modules.get(getattr(agent, "__module__", "") or "")
    return _declared(f"{module_name}:{agent.__qualname__}", agent, module)


def _declared(ref: str, fn: Any, module: Any) -> AgentSpec:
    tools = getattr(module, "TOOLS", None) or ToolRegistry()
    if not isinstance(tools, ToolRegistry):
        raise AgentLoadError(f"{ref}: its module's TOOLS must be a tachograph.ToolRegistry")
    return AgentSpec(
        ref=ref,
        fn=fn,
        tools=tools,
        prompts=dict(getattr(module, "PROMPTS", {}) or {}),
        workflow=getattr(module, "WORKFLOW", None),
        identity=dict(getattr(module, "AGENT", {}) or {}),
    )
