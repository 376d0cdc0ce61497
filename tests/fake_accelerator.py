"""A fake accelerator for the strict-device tier: a real torch device type, ``fakegpu``,
whose tensors keep their data in CPU memory and enforce what a GPU enforces.

No GPU is lent to CI, yet the bugs that kill a first GPU run are device bugs: a batch
left on the CPU while the weights are on the GPU, a tensor built without ``device=``
inside a loss, a checkpoint that loads onto ``cuda:0`` on every rank, an RNG fork that
forgets the device's generator. On a CPU-only machine every tensor is on the CPU, so
none of these can fail. Here they do:

- ``fakegpu`` is registered as torch's PrivateUse1 backend (the hook torch offers for
  out-of-tree devices), with a device module (``torch.fakegpu``) that holds one random
  generator per device, as CUDA does. ``torch.manual_seed`` seeds them,
  ``torch.random.fork_rng(device_type="fakegpu")`` forks them, and sampling ops on the
  device draw from them, not from the CPU generator.
- Tensors on it are :class:`DeviceTensor` wrappers around a CPU tensor. Every op on
  them runs on the CPU copy, under the rules of a CUDA device: all tensor arguments on
  one device, except CPU tensors of zero dimensions (scalars) and the ops a GPU lets mix
  (copies, indexing with CPU indices); otherwise ``RuntimeError: Expected all tensors
  to be on the same device``, as CUDA says it. ``.numpy()`` refuses, ``.item()`` and
  ``.tolist()`` copy to the host.
- ``torch.save`` records which GPU of the node a device tensor was on (the saving
  process's, :func:`install`'s ``device``, like ``LOCAL_RANK``), and ``torch.load``
  puts it back there unless ``map_location`` says otherwise, as for CUDA tensors. A
  process restoring a tensor onto another process's GPU raises: a checkpoint written
  by rank 0 and loaded without ``map_location`` by rank 1 fails here, as on a node it
  fills rank 0's GPU. (Torch's autograd engine knows one ``fakegpu`` device only, so
  every process's tensors are ``fakegpu:0`` to torch; the GPU of the node is tracked
  beside them.)

Everything runs for real (transformers models, generate, autograd, AdamW, safetensors),
only slower (each op passes through Python). A backend registration is global and
final within a process, so the tier runs each scenario in a fresh process
(:func:`run_isolated`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

NAME = "fakegpu"
aten = torch.ops.aten

# Ops a CUDA device accepts with CPU tensors among their arguments.
MIXING_ALLOWED = {
    aten.copy_.default,  # dst.copy_(src) across devices
    aten._to_copy.default,
    aten.index.Tensor,  # x[cpu_indices]
    aten.index_put_.default,  # x[cpu_indices] = v
    aten._index_put_impl_.default,
    aten.index_put.default,
    aten._local_scalar_dense.default,
    aten.lift_fresh.default,
    aten.is_pinned.default,
}
# In-place ops that change a tensor's shape: not supported on the wrapper.
RESHAPING_INPLACE = {
    aten.resize_.default,
    aten.set_.source_Storage,
    aten.set_.source_Tensor,
    aten.set_.default,
    aten.as_strided_.default,
    aten.unsqueeze_.default,
    aten.squeeze_.default,
    aten.squeeze_.dim,
    aten.t_.default,
    aten.transpose_.default,
}


class DeviceModule:
    """``torch.fakegpu``: device count, current device and per-device generators."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.current = 0
        self.generators = [torch.Generator() for _ in range(count)]
        self.allocated = [0] * count  # bytes of device tensors ever created, per device

    def is_initialized(self) -> bool:
        return True

    def is_available(self) -> bool:
        return True

    def _is_in_bad_fork(self) -> bool:
        return False

    def device_count(self) -> int:
        return self.count

    def current_device(self) -> int:
        return self.current

    def set_device(self, device: Any) -> None:
        self.current = _index(device)

    def synchronize(self, device: Any = None) -> None:
        """Nothing runs asynchronously here."""

    def manual_seed(self, seed: int) -> None:
        self.generators[self.current].manual_seed(int(seed))

    def manual_seed_all(self, seed: int) -> None:
        for g in self.generators:
            g.manual_seed(int(seed))

    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return self.generators[_index(device, self.current)].get_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        self.generators[_index(device, self.current)].set_state(state)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)


def _index(device: Any, default: int = 0) -> int:
    if device is None:
        return default
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return default if device.index is None else device.index


MODULE: DeviceModule | None = None
OWN_DEVICE: list[int] = [0]  # which GPU of the node this process's device stands for


class DeviceTensor(torch.Tensor):
    """A tensor on ``fakegpu:<index>``; its data is the CPU tensor ``elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, index: int) -> DeviceTensor:
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=torch.device(NAME, index),
            requires_grad=False,
        )  # fmt: skip
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"DeviceTensor({self.elem!r}, device='{self.device}')"

    # host access, as a CUDA tensor allows it (a copy) or refuses it
    def tolist(self) -> Any:
        return self.elem.tolist()

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to "
            "copy the tensor to host memory first."
        )

    def untyped_storage(self) -> Any:
        return self.elem.untyped_storage()

    def storage(self) -> Any:
        return self.elem.storage()

    def data_ptr(self) -> int:
        return self.elem.data_ptr()

    def __reduce_ex__(self, protocol: int) -> Any:
        return (_rebuild, (self.elem.detach().clone(), OWN_DEVICE[0]))

    def __deepcopy__(self, memo: dict) -> DeviceTensor:
        import copy

        return DeviceTensor(copy.deepcopy(self.elem, memo), self.device.index)


_MAP_LOCATION: contextvars.ContextVar[Any] = contextvars.ContextVar("map_location", default=None)


def _rebuild(elem: torch.Tensor, saved_on: int) -> torch.Tensor:
    """Unpickling a device tensor: where ``torch.load``'s ``map_location`` sends it, else
    back to the GPU it was saved from (as CUDA tensors are)."""
    where = _MAP_LOCATION.get()
    if callable(where):  # torch's (storage, location) convention is not emulated
        raise NotImplementedError("a callable map_location is not emulated")
    if isinstance(where, dict):
        where = where.get(f"{NAME}:{saved_on}", f"{NAME}:{saved_on}")
    target = torch.device(where) if where is not None else torch.device(NAME, saved_on)
    if target.type == "cpu":
        return elem
    if target.type != NAME:
        raise RuntimeError(f"cannot map a {NAME} tensor to {target}")
    gpu = _index(target, OWN_DEVICE[0])
    if gpu != OWN_DEVICE[0]:
        raise RuntimeError(
            f"a tensor was created on {NAME}:{gpu} by a process whose device is "
            f"{NAME}:{OWN_DEVICE[0]} (on a GPU node: memory on another rank's GPU)"
        )
    return _wrap(elem, 0)


def _wrap(elem: torch.Tensor, index: int) -> DeviceTensor:
    if MODULE is not None:
        MODULE.allocated[OWN_DEVICE[0]] += elem.numel() * elem.element_size()
    return DeviceTensor(elem, index)


def _is_device(x: Any) -> bool:
    return isinstance(x, DeviceTensor)


def _target(func: Any, args: tuple, kwargs: dict, on_device: list) -> int | None:
    """The device index the op's outputs live on (None: the CPU)."""
    device = kwargs.get("device")
    if device is not None:
        device = torch.device(device)
        return 0 if device.type == NAME else None
    if func is aten.copy_.default:  # in place: the destination's device
        return args[0].device.index if _is_device(args[0]) else None
    return on_device[0].device.index if on_device else None


def _check_mixing(func: Any, on_device: list, on_host: list) -> None:
    indices = {t.device.index for t in on_device}
    if len(indices) > 1:
        a, b = sorted(indices)[:2]
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{NAME}:{a} and {NAME}:{b}! ({func})"
        )
    if on_device and func not in MIXING_ALLOWED:
        for t in on_host:
            if t.dim() > 0:
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two "
                    f"devices, {on_device[0].device} and cpu! ({func}: a CPU tensor of shape "
                    f"{tuple(t.shape)})"
                )


def _uses_generator(func: Any) -> bool:
    return any(a.name == "generator" for a in func._schema.arguments)


def dispatch(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` on the CPU copies under a GPU's device rules; wrap what it returns."""
    flat, _ = tree_flatten((args, kwargs))
    on_device = [x for x in flat if _is_device(x)]
    on_host = [x for x in flat if isinstance(x, torch.Tensor) and not _is_device(x)]
    _check_mixing(func, on_device, on_host)
    target = _target(func, args, kwargs, on_device)
    if func in RESHAPING_INPLACE and on_device:
        raise NotImplementedError(f"{func} on a {NAME} tensor is not emulated")
    if "device" in kwargs:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    if target is not None and MODULE is not None and _uses_generator(func):
        if kwargs.get("generator") is None:  # sampling on a GPU draws from its generator
            kwargs = {**kwargs, "generator": MODULE.generators[target]}
    wrappers: dict[int, DeviceTensor] = {}

    def unwrap(x: Any) -> Any:
        if _is_device(x):
            wrappers[id(x.elem)] = x
            return x.elem
        return x

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    def wrap(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or _is_device(x):
            return x
        if id(x) in wrappers:  # in place or out=: the same tensor object
            return wrappers[id(x)]
        return x if target is None else _wrap(x, target)

    return tree_map(wrap, out)


class _Mode(TorchDispatchMode):
    """Catches factories (``torch.zeros(..., device="fakegpu")``) and copies onto the
    device, which carry no device tensor in their arguments."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})


_LIB: torch.library.Library | None = None


def _register(count: int) -> DeviceModule:
    """Register ``fakegpu`` with torch (once per process)."""
    global MODULE, _LIB
    if MODULE is not None:
        return MODULE
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    MODULE = DeviceModule(count)
    _setup_privateuseone_for_python_backend(NAME, backend_module=MODULE)
    # reached with the Python dispatch key excluded (torch.tensor([...0-d device tensors]))
    _LIB = torch.library.Library("aten", "IMPL")
    _LIB.impl("_local_scalar_dense", lambda t: t.elem.item(), "PrivateUse1")
    return MODULE


@contextlib.contextmanager
def install(device: int = 0, count: int = 2):
    """Make ``fakegpu`` this process's accelerator for the ``with`` block, standing for
    GPU ``device`` of the node (the device itself is ``fakegpu:0``, see above):
    factories and copies onto it are caught, ``torch.load`` honours ``map_location``
    for its tensors, and ``nn.Module.to`` swaps parameters in place (so tied weights
    stay tied, as an in-place ``.data`` move keeps them on a real GPU)."""
    _register(count)
    OWN_DEVICE[0] = device
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    real_load = torch.load

    @functools.wraps(real_load)
    def load(*args: Any, **kwargs: Any) -> Any:
        token = _MAP_LOCATION.set(kwargs.get("map_location", args[1] if len(args) > 1 else None))
        try:
            return real_load(*args, **kwargs)
        finally:
            _MAP_LOCATION.reset(token)

    torch.load = load
    # torch.tensor(data, device=...) builds on the CPU, then copies through the dispatcher
    # (where the mode sees it) instead of allocating on the device directly
    lift = torch._C._only_lift_cpu_tensors()
    torch._C._set_only_lift_cpu_tensors(True)
    try:
        with _Mode():
            yield torch.device(NAME, 0)
    finally:
        torch._C._set_only_lift_cpu_tensors(lift)
        torch.load = real_load
        torch.__future__.set_swap_module_params_on_conversion(swap)


def on_device(t: Any, index: int | None = None) -> bool:
    """Whether ``t`` is a tensor on ``fakegpu`` (on ``fakegpu:index`` if given)."""
    return _is_device(t) and (index is None or t.device.index == index)


# --------------------------------------------------------------------------- isolation


def _child(fn: Callable, args: tuple, kwargs: dict, conn: Any) -> None:
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the test
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class ScenarioFailed(AssertionError):
    """A scenario raised in its process; the message carries the child's traceback."""


def run_isolated(fn: Callable, *args: Any, timeout: float = 600, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process; its return value, or a
    :class:`ScenarioFailed` with the child's exception and traceback."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, kwargs, child))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise ScenarioFailed(f"{fn.__name__} did not finish in {timeout} s")
        status, value = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    if status == "error":
        raise ScenarioFailed(value)
    return value
