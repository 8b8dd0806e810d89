"""What `Probe` gives the mixins its passes are split into (`lockstep`,
`inferencepaths`, `maskedpasses`), declared once for the type checker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layertree import LayerNode
    from .upstream import Upstream


class ProbeHost:
    """The probe's state and methods every pass mixin uses; nothing at run time."""

    if TYPE_CHECKING:
        keras: Any
        model: Any
        nodes: list[LayerNode]
        stats: dict
        upstream: Upstream
        _eval_store: dict

        def _call_model(self, xs: Any, what: str, handler: Any, **kwargs: Any) -> Any: ...
        def _next_call(self, node: LayerNode) -> int: ...
        def _run(self, node: LayerNode, original: Any, args: Any, kwargs: Any) -> Any: ...
        def _set_seeds(self, batch_index: int) -> None: ...
        def _inference_inputs(self, xs: Any) -> Any: ...
