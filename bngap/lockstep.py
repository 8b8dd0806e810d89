"""One batch's inference and training passes in one call of the model.

The passes one after the other (`Probe.eval_pass`, then `Probe.train_pass`)
hold every inference output until the training pass reaches its layer, and
Keras' Functional holds every training output until its pass ends. So the
training pass allocates while the inference outputs still fill the memory it
would have reused: on ResNet50 at batch 32, 650 MB touched for the first
time, which a virtual machine backing its memory lazily serves slowly (about
1 s of a cold check on this project's machine).

Here the model is called once, as fit() calls it. Each layer call first
computes the layer's inference output from its inputs' inference outputs
(their twins), then its training output, and compares the two. A twin is let
go after its last use, counted from Keras' graphs (`twinflow.py`): inference
outputs are held only while a later call needs them.

Only models of Keras' own classes whose graphs `twinflow` counts, and with
no stateful RNN (its inference call would move the state its training call
starts from), take this path. Anything unexpected during the pass (a tensor without a twin, a mask,
a layer called twice, an error) abandons it before any quantity is added;
the batch then runs the classic way, which reports an error as it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import _context_training, keep_random, put_back_random
from .errors import ForwardPassError
from .probehost import ProbeHost
from .twinflow import NEVER, twin_uses
from .upstream import BUDGET_FLOOR, BUDGET_SHARE, INPUT, itemsize


class Abandon(Exception):
    """The lockstep pass cannot go on; the batch runs the classic way."""


class _Slot:
    """A layer output's shape and dtype, for a one-sample stand-in (`_modes_after`)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, t):
        self.shape, self.dtype = (1, *tuple(t.shape)[1:]), t.dtype


class _Twin:
    """A training tensor's twin, held for the calls still to use it."""

    __slots__ = ("t", "r", "left", "made_by")

    def __init__(self, t, r, left: int, made_by: tuple):
        self.t, self.r, self.left, self.made_by = t, r, left, made_by


class LockstepPass(ProbeHost):
    """Probe methods for the lockstep pass (mixed into `Probe`)."""

    if TYPE_CHECKING:
        plain: bool
        compiled: Any
        noflag_seen: Any
        _producers: dict
        _watch_noflag: bool

        def _clear_store(self) -> None: ...
        def after_training_pass(self) -> None: ...
        def modes_pass(self, xs: Any) -> dict: ...
        def _eval_enter(self, *a: Any) -> None: ...
        def _eval_leave(self, *a: Any) -> None: ...
        def _train_call(self, *a: Any) -> Any: ...

    def _lockstep_setup(self) -> None:
        """On entering the probe: whether batches may take the lockstep pass."""
        self._lockstep_on = False
        self._twins: dict[int, _Twin] = {}  # by id of the training tensor
        self._holding: dict[int, int] = {}  # id of a twin: the entries holding it
        self._templates: dict = {}
        # a stateful RNN's inference call writes the state its training call reads
        stateful = any(getattr(n.layer, "stateful", False) for n in self.nodes)
        plain = self.plain and not stateful
        self._uses = twin_uses(self.model, self.nodes, self.keras) if plain else None
        self._sample_bytes = self._output_bytes() if self._uses is not None else 0
        # a layer's seed-generator states: a recurrent layer with dropout draws its masks in
        # inference mode too (on torch, unseeded, from the global generator), which in the
        # classic structure the inference pass does not leave for the training pass
        # (`_set_seeds` comes between them)
        self._seeded = {
            n.index: seeds
            for n in (self.nodes if self._uses is not None else ())
            if not n.children
            and (seeds := [v for v in n.layer.variables if "seed_generator_state" in v.path])
        }

    def lockstep_pass(self, xs, batch_index: int):
        """(inference outputs, training outputs) of the batch, from one call
        of the model (see the module's doc); None when the pass was
        abandoned, having added nothing."""
        if self._uses is None or self.compiled is not None:
            return None
        inputs = self._inference_inputs(xs)
        self._clear_store()
        flat_in = [t for t in self.keras.tree.flatten(inputs) if hasattr(t, "shape")]
        batch = int(flat_in[0].shape[0]) if flat_in and flat_in[0].shape else 1
        self.upstream.begin(
            inputs, max(BUDGET_FLOOR, int(BUDGET_SHARE * self._sample_bytes * batch))
        )
        self._twins = {id(t): _Twin(t, t, NEVER, INPUT) for t in flat_in}
        self._holding = {id(t): 1 for t in flat_in}
        self._lockstep_on = True
        self._set_seeds(batch_index)
        try:
            # None: abandoned (`_call_model` stops on Abandon; a model's output is never None)
            out = self._call_model(
                xs, "training", self._h_lock(), fit=True, defer=True, inputs=inputs
            )
            try:
                ev = None if out is None else self.keras.tree.map_structure(self._twin_of, out)
            except Abandon:
                ev = None
            if ev is None:  # not tried again: the next batches would stop where this one did
                self._uses = None
                self.upstream.reset()
                return None
            self.upstream.finished(ev)
        finally:
            self._lockstep_on = False
            self._twins, self._holding = {}, {}
            self._clear_store()
        self.after_training_pass()
        self._modes_after(xs)
        return ev, out

    def _output_bytes(self) -> int:
        """Bytes of a sample's layer outputs in a pass (the masked passes'
        budget is a share of them), from the shapes Keras recorded."""
        total = 0
        for node in self.nodes:
            if node.children:
                continue
            for gnode in getattr(node.layer, "_inbound_nodes", ())[:1]:
                for kt in gnode.outputs:
                    dims = tuple(kt.shape)[1:]
                    if all(isinstance(d, int) for d in dims):
                        total += int(np.prod(dims)) * itemsize(kt.dtype)
        return total

    def _twin_of(self, t):
        if not hasattr(t, "shape"):
            return t
        got = self._twins.get(id(t))
        if got is None or got.t is not t:
            raise Abandon
        return got.r

    def _tensors_of(self, args, kwargs) -> list:
        """The tensors a call was given, each as often as it was given."""
        plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in kwargs.values())
        if plain and len(args) == 1 and hasattr(args[0], "shape"):
            return [args[0]]
        return [t for t in self.keras.tree.flatten((args, kwargs)) if hasattr(t, "shape")]

    def _twins_in(self, args, kwargs):
        """The call's arguments with each tensor replaced by its twin."""
        if len(args) == 1 and hasattr(args[0], "shape"):
            targs: tuple = (self._twin_of(args[0]),)
        else:
            targs = self.keras.tree.map_structure(self._twin_of, tuple(args))
        tkw: dict[str, Any] = {}
        for name, v in kwargs.items():
            if name == "training":  # what model(x, training=False) gives every layer taking it
                tkw[name] = False
            elif v is None or isinstance(v, (bool, int, float, str)):
                tkw[name] = v
            else:
                tkw[name] = self.keras.tree.map_structure(self._twin_of, v)
        return targs, tkw

    def _h_lock(self):
        def handler(node, original, args, kwargs):
            try:
                return self._lock_call(node, original, args, kwargs)
            except (Abandon, ForwardPassError):
                raise
            except Exception as e:  # run the classic way, which reports it as it does
                raise Abandon from e

        return handler

    def _lock_call(self, node, original, args, kwargs):
        k = self._next_call(node)
        if k or kwargs.get("mask") is not None:
            raise Abandon
        targs, tkw = self._twins_in(args, kwargs)
        self._eval_enter(node, k, targs, tkw, True, True)
        if node.children:  # its output is its layers': their twins are made inside it

            def stored(out):
                r = self.keras.tree.map_structure(self._twin_of, out)
                self._eval_leave(node, k, targs, tkw, r, True)
                return r

            out, _ = self._train_call(node, k, original, args, kwargs, True, stored)
        else:
            seeds = self._seeded.get(node.index)
            kept = keep_random(seeds) if seeds else []
            with _context_training(False):
                r = self._run(node, original, targs, tkw)
            put_back_random(kept)  # what it drew, the training call draws again
            self._eval_leave(node, k, targs, tkw, r, True)
            if self._watch_noflag:
                self._templates[(node.index, k)] = self.keras.tree.map_structure(
                    lambda t: _Slot(t) if hasattr(t, "shape") else t, r
                )
            out, _ = self._train_call(node, k, original, args, kwargs, True, lambda _: r)
            self._pair(node, out, r)
        self._used(args, kwargs)
        return out

    def _pair(self, node, out, r) -> None:
        """Registers the twins of a layer's outputs, held for their uses."""
        flat_t, flat_r = self.keras.tree.flatten(out), self.keras.tree.flatten(r)
        if len(flat_t) != len(flat_r):
            raise Abandon
        uses = self._uses or {}
        for i, (t, tr) in enumerate(zip(flat_t, flat_r)):
            if not hasattr(t, "shape"):
                continue
            left = uses.get((node.index, i))
            got = self._twins.get(id(t))
            if left is None or (got is not None and got.r is not tr):
                raise Abandon
            if got is not None:  # handed back as it came (Identity, a linear activation)
                got.left += left
            elif left > 0:
                self._twins[id(t)] = _Twin(t, tr, left, (node.index, 0))
                self._holding[id(tr)] = self._holding.get(id(tr), 0) + 1

    def _used(self, args, kwargs) -> None:
        """A call has ended: its inputs' twins are let go after their last use."""
        twins = self._twins
        for t in self._tensors_of(args, kwargs):
            got = twins.get(id(t))
            if got is None or got.t is not t:
                continue
            got.left -= 1
            if got.left <= 0:
                del twins[id(t)]
                r = got.r
                self._holding[id(r)] -= 1
                if not self._holding[id(r)]:  # no other output has it as its twin (Dropout's)
                    del self._holding[id(r)]
                    self._producers.pop(id(r), None)
                    self.upstream.forget(r)

    def _frontier_now(self):
        """The inference outputs held at this point of the training pass."""
        if not self._lockstep_on:
            return self.upstream.frontier_now()
        if not self.upstream.usable:
            return None
        return {id(e.r): e.r for e in self._twins.values() if e.made_by != INPUT}

    def _modes_after(self, xs) -> None:
        """The no-flag modes pass of the first batch (`modes_pass`), each
        layer handing back a one-sample stand-in of its output."""
        templates, self._templates = self._templates, {}
        if not self._watch_noflag:
            return
        self._watch_noflag = False
        ops, made = self.keras.ops, {}

        def stand_in(s):  # one per shape: only each layer's `training` value is read
            if not isinstance(s, _Slot):
                return s
            key = (s.shape, str(s.dtype))
            if key not in made:
                made[key] = ops.zeros(s.shape, dtype=s.dtype)
            return made[key]

        self._eval_store.update(
            {key: self.keras.tree.map_structure(stand_in, tpl) for key, tpl in templates.items()}
        )
        try:
            self.noflag_seen = self.modes_pass(xs)
        finally:
            self._eval_store.clear()


__all__ = ["LockstepPass", "Abandon"]
