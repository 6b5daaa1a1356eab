"""Scale-out on Ray: a depth model whose batches run on a pool of Ray actors.

Each actor holds the real model (loaded once, in the actor, by
:func:`tiledepth.models.load_model`): one actor per GPU of the Ray cluster
(``num_gpus=1``, so Ray gives each its own device), or a configured number of
CPU actors where the cluster has no GPU. :class:`RayModelPool` implements the
model protocol (:class:`~tiledepth.models.base.DepthModel`) plus ``submit`` and
``result``, so :func:`tiledepth.infer.infer_tiles` keeps several batches in
flight across the actors: the tiles of one raster are streamed to every actor,
and a single gigapixel raster uses every GPU. Reading, alignment, blending and
writing stay in the process that handles the raster, where the actors' predictions
are checked as a local model's (:func:`tiledepth.models.base.check_prediction`).

Tiles are seeded by their key (see :mod:`tiledepth.models.base`), not by the
actor or batch they land in, so the output equals the local executor's.

Ray is an optional dependency (``pip install "tiledepth[ray]"``), imported
only here and only when a pool is started.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import re
import signal
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from tiledepth.errors import DependencyError, ModelError, OptionError, first_line
from tiledepth.models.base import TRAITS, ModelStopped, check_stop, check_tile_size, stop_event
from tiledepth.options import Options

__all__ = ["RAY_INSTALL", "RayModelPool", "check_actors", "import_ray", "ray_pool"]

log = logging.getLogger(__name__)

#: What to run when Ray is missing.
RAY_INSTALL = 'pip install "tiledepth[ray]"'
#: Batches queued per actor: one running and one waiting, so an actor never waits for us.
IN_FLIGHT_PER_ACTOR = 2
#: Seconds to wait for the actors to start before saying what we are waiting for.
START_WARNING_S = 60.0
#: Seconds between two looks at the run's stop event while a batch is on an actor.
POLL_S = 0.1
#: Most CPUs an actor takes (its torch threads, for clipping, noise and ensembling).
ACTOR_CPUS = 4
#: Optional model attributes the driver reads off the pool, carried from the actors' model
#: where it has them (:data:`tiledepth.models.base.TRAITS`).
CARRIED = TRAITS


def actor_resources(device: str, *, gpus: int, cpus: int, actors: int | None
                    ) -> tuple[int, dict[str, float], str]:
    """Number of actors, each one's Ray resources, and the device it loads its model on.

    Ray hands every GPU actor its own GPU, which the actor sees as ``cuda:0``:
    ``--device cuda:N`` (N >= 1) names a GPU no actor sees, so it is mapped to
    ``cuda``. Each actor takes an equal share of the cluster's CPUs, 1 to
    :data:`ACTOR_CPUS` (Ray sets its torch threads to that many).

    Examples
    --------
    >>> actor_resources("cuda:1", gpus=2, cpus=16, actors=None)
    (2, {'num_gpus': 1, 'num_cpus': 4}, 'cuda')
    >>> actor_resources("auto", gpus=0, cpus=2, actors=None)
    (1, {'num_cpus': 2}, 'auto')
    """
    use_gpu = gpus > 0 and str(device) != "cpu"
    n = actors if actors is not None else (gpus if use_gpu else 1)
    share = max(1, min(ACTOR_CPUS, cpus // max(n, 1)))
    if not use_gpu:
        return n, {"num_cpus": share}, device
    if str(device).startswith("cuda:"):
        log.info("--device %s: each Ray actor runs on the GPU Ray gives it, which it sees as "
                 "cuda:0", device)
        device = "cuda"
    return n, {"num_gpus": 1, "num_cpus": share}, device


def check_actors(actors: object) -> None:
    """Raise OptionError unless ``actors`` (``ray_actors``, ``--ray-actors``) is None or a
    whole number >= 1: the one check of it, made by :func:`ray_pool` and, before any input
    is searched or a manifest written, by :func:`tiledepth.batchrun.batch`.

    Examples
    --------
    >>> check_actors(2)
    >>> try:
    ...     check_actors(0)
    ... except OptionError as exc:
    ...     print(exc)
    ray_actors (--ray-actors) must be a whole number >= 1 (model actors on Ray), got 0
    """
    if actors is not None and (not isinstance(actors, int) or isinstance(actors, bool)
                               or actors < 1):
        raise OptionError(f"ray_actors (--ray-actors) must be a whole number >= 1 (model "
                          f"actors on Ray), got {actors!r}")


def import_ray() -> Any:
    """Import Ray, or raise DependencyError with the pip command that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise DependencyError(
            f"--executor ray needs Ray, which is not installed; run: {RAY_INSTALL}"
        ) from exc
    return ray


class ModelActor:
    """The body of one Ray actor: holds one loaded model and predicts batches.

    A failure to load is kept and raised by :meth:`info`, so it reaches the
    driver as the original error (a one-line :class:`ModelLoadError`), not as
    a dead actor.
    """

    def __init__(self, model: Any, load_options: dict[str, Any],
                 tile_size: int | None = None) -> None:
        from tiledepth.models import load_model
        from tiledepth.models.autobatch import AUTO, resolve_batch_size

        self.error: BaseException | None = None
        try:
            self.model = load_model(model, **load_options)
            if load_options.get("batch_size") == AUTO and tile_size is not None:
                resolve_batch_size(self.model, tile_size)  # on this actor's GPU
        except Exception as exc:  # re-raised by info() in the driver
            self.error = exc

    def info(self) -> dict[str, Any]:
        """name, batch_size, steps, identity, whether the model is a Python callable and the
        :data:`CARRIED` attributes the loaded model has (one that is None is left out, as
        absent); raises its load error."""
        if self.error is not None:
            raise self.error
        from tiledepth.identity import model_identity
        from tiledepth.models.base import CallableModel

        info = {"name": self.model.name, "batch_size": self.model.batch_size,
                "steps": getattr(self.model, "steps", None),
                "identity": model_identity(self.model),
                "callable": isinstance(self.model, CallableModel)}
        for attr in CARRIED:
            value = getattr(self.model, attr, None)
            if value is not None:
                info[attr] = value
        return info

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        return self.model.predict(batch, keys)


class RayModelPool:
    """A DepthModel that runs each batch on one of a pool of Ray actors.

    Batches go to the actors in turn. :meth:`submit` returns at once (Ray
    copies the batch into its object store), :meth:`result` waits for one
    batch; ``in_flight`` tells :func:`tiledepth.infer.infer_tiles` how many
    to keep submitted. :meth:`predict` is both at once (the coarse image).

    Use :func:`ray_pool` to start one; it also stops the actors.

    Parameters
    ----------
    actors : list of ray.actor.ActorHandle
        Started :class:`ModelActor` actors, all holding the same model.
    name : str
        The model's name (written to the output's provenance tags).
    batch_size : int
        Tiles per batch, as the model wants.
    steps : int, optional
        The model's denoising steps, where it has them.
    identity : str, optional
        The model's identity as an actor computed it
        (:func:`tiledepth.identity.model_identity`), for resuming a checkpoint.
    kind : str, optional
        The model's output kind (:mod:`tiledepth.kinds`), where it declares one.
    min_tile, tile_multiple : int, optional
        The tile sizes the model takes (:func:`~tiledepth.models.base.check_tile_size`),
        where it declares them.

    Each optional attribute left None is not set, so the pool reads as the model does
    (``getattr(pool, "kind", "depth")``).
    """

    def __init__(self, actors: list, *, name: str, batch_size: int,
                 steps: int | None = None, identity: str | None = None,
                 kind: str | None = None, min_tile: int | None = None,
                 tile_multiple: int | None = None) -> None:
        if not actors:
            raise ValueError("actors must not be empty")
        self.actors = list(actors)
        self.name = name
        self.batch_size = batch_size
        if steps is not None:
            self.steps = steps
        if identity is not None:
            self.identity = identity
        for attr, value in zip(CARRIED, (kind, min_tile, tile_multiple), strict=True):
            if value is not None:
                setattr(self, attr, value)
        self.in_flight = IN_FLIGHT_PER_ACTOR * len(self.actors)
        self._next = 0
        # the batches submitted and still held by whoever submitted them, for cancelling
        # those of a run that is ending (weak: a batch its run dropped is Ray's to free)
        self._submitted: weakref.WeakSet[_Submitted] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: Whether an actor died since the last :meth:`drop_dead` (Ray restarts it a few
        #: times, then gives it up and every batch sent to it fails).
        self.died = False

    def __repr__(self) -> str:
        return f"RayModelPool({self.name!r}, actors={len(self.actors)})"

    def submit(self, batch: np.ndarray, keys: Sequence[int]) -> _Submitted:
        """Start predicting ``batch`` (B, H, W, 3) on the next actor; return a handle.

        A run that is ending (:func:`~tiledepth.models.base.check_stop`) submits no
        further batch: ModelStopped is raised, as by a local model call.
        """
        check_stop()
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        handle = _Submitted(actor.predict.remote(batch, [int(k) for k in keys]),
                            stop_event().get(), threading.get_ident())
        with self._lock:
            self._submitted.add(handle)
        return handle

    def result(self, handle: _Submitted) -> np.ndarray:
        """Wait for a submitted batch; return its (B, H, W) float32 depth.

        An error raised by the model in the actor is raised here as itself
        (a ModelError stays a ModelError, with its one-line message). A run that is
        ending stops waiting within :data:`POLL_S` (ModelStopped), and its batches
        still queued on the actors are cancelled.
        """
        ray = import_ray()
        try:
            # short waits, as a local model call waits for its turn (tiledepth.turns): a
            # batch's Ctrl-C or SIGTERM stops the run here, not once every tile is predicted
            while not ray.wait([handle.ref], timeout=POLL_S)[0]:
                check_stop()
        except ModelStopped:
            self._cancel_stopped(ray, handle)
            raise
        with self._lock:
            self._submitted.discard(handle)
        try:
            return _get(ray, handle.ref, failed=f"model {self.name!r} failed in a Ray actor",
                        died=f"a Ray actor holding model {self.name!r} died")
        except Exception as exc:
            if isinstance(exc, ModelError) and isinstance(exc.__cause__,
                                                          ray.exceptions.RayActorError):
                self.died = True
            if not isinstance(exc, ModelStopped):
                self._drop_run(ray, handle)
            raise

    def _drop_run(self, ray: Any, handle: _Submitted) -> None:
        """Cancel and collect the batches that the run of the failed batch ``handle`` (the
        same thread and stop event) submitted and has not collected: it fails with that
        batch's error. Left unread, Ray printed the error of each ("Unhandled error", a
        traceback) once the run dropped them. Each is waited for, until the run is stopping,
        and its outcome discarded: Ray does not interrupt an actor's running task, and
        (Ray 2.60) runs a cancelled one queued on an actor all the same, dropping its result."""
        others = self._cancel_where(
            ray, lambda h: h.thread == handle.thread and h.stop is handle.stop)
        waiting = [h.ref for h in others]
        while waiting and not (handle.stop is not None and handle.stop.is_set()):
            ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S)
            for ref in ready:
                with contextlib.suppress(Exception):  # its error (or cancellation) is handled
                    ray.get(ref)

    def _cancel_stopped(self, ray: Any, handle: _Submitted) -> None:
        """Cancel ``handle`` and every batch submitted by a run that is ending: those still
        queued on an actor are dropped (one an actor is running ends there: Ray does not
        interrupt an actor's task), so the actors are free for the next run."""
        self._cancel_where(
            ray, lambda h: h is handle or (h.stop is not None and h.stop.is_set()))

    def _cancel_where(self, ray: Any, which: Callable[[_Submitted], bool]) -> list[_Submitted]:
        """Take the submitted batches ``which`` selects off the list of those in flight and
        cancel each (one finished, or whose actor is gone, as it is); return them."""
        with self._lock:
            taken = [h for h in self._submitted if which(h)]
            for h in taken:
                self._submitted.discard(h)
        for h in taken:
            with contextlib.suppress(Exception):  # finished, or its actor gone: nothing to do
                ray.cancel(h.ref)
        return taken

    def drop_dead(self) -> int:
        """Keep only the actors that still answer (a dead one would fail every batch sent
        to it); return how many are left. Waits up to :data:`START_WARNING_S` for actors
        that are busy or restarting, and keeps those that do not answer by then."""
        ray = import_ray()
        refs = [actor.info.remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=START_WARNING_S)
        alive = []
        for actor, ref in zip(self.actors, refs, strict=True):
            if ref in ready:
                try:
                    ray.get(ref)
                except Exception:  # gone for good, or its model no longer loads
                    continue
            alive.append(actor)
        if alive:
            self.actors = alive
            self.in_flight = IN_FLIGHT_PER_ACTOR * len(alive)
        self.died = False
        return len(alive)

    def predict(self, batch: np.ndarray, keys: Sequence[int]) -> np.ndarray:
        """Predict ``batch`` (B, H, W, 3) on one actor and wait: (B, H, W) float32."""
        return self.result(self.submit(batch, keys))


class _Submitted:
    """A batch submitted to an actor: its Ray object ref, the stop event of the run that
    submitted it (:func:`~tiledepth.models.base.stop_event`; None: never stopped) and the
    thread that did (a run submits and collects its batches on one thread)."""

    __slots__ = ("__weakref__", "ref", "stop", "thread")

    def __init__(self, ref: Any, stop: Any, thread: int | None = None) -> None:
        self.ref, self.stop, self.thread = ref, stop, thread


@contextlib.contextmanager
def ray_pool(opts: Options, *, address: str | None = None,
             actors: int | None = None) -> Iterator[RayModelPool]:
    """Start Ray actors holding ``opts.model``; yield them as one :class:`RayModelPool`.

    Joins the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``,
    ...), or the Ray already initialised in this process, or starts a local
    Ray (never the cluster that ``RAY_ADDRESS`` or the last ``ray start`` names,
    which Ray itself would join: pass ``"auto"`` for that). Where the cluster has
    GPUs (and ``opts.device`` is not ``cpu``), every actor takes one
    (``num_gpus=1``). Every actor also takes an equal share of the cluster's
    CPUs, 1 to :data:`ACTOR_CPUS` (:func:`actor_resources`). On exit the actors
    are stopped, and a Ray started here is shut down.

    Parameters
    ----------
    opts : Options
        The model and its loading options (device, dtype, steps, ensemble,
        seed, batch_size), used in every actor.
    address : str, optional
        Address of a running Ray cluster.
    actors : int, optional
        Number of model actors; default one per GPU of the cluster, or 1
        where it has none.

    Raises
    ------
    OptionError
        For bad ``actors``; for ``opts.uncertainty`` (the pool gives no uncertainty,
        the local executor does); where Ray cannot be started or joined.

    Examples
    --------
    >>> import tiledepth
    >>> from tiledepth.options import make_options
    >>> with ray_pool(make_options(model="mymodels:depth"), actors=2) as model:  # doctest: +SKIP
    ...     result = tiledepth.run("ortho.tif", model=model)
    """
    check_actors(actors)
    if opts.uncertainty:
        # the pool has no predict_with_uncertainty (its batches run in flight, one array
        # back per batch): said here, once, not by every raster failing with "gives no
        # uncertainty" for a model that gives it when run locally
        raise OptionError("uncertainty needs the local executor: the Ray pool gives no "
                          "uncertainty; drop --executor ray or --uncertainty")
    ray = import_ray()
    started = False
    faults = faulthandler.is_enabled()  # ray.init enables it, and leaves it so at shutdown
    if not ray.is_initialized():
        log.info("starting Ray%s", f" (joining {address})" if address else " locally")
        if address is not None:
            _check_reachable(address)
        try:
            # a local SIGTERM waits for ray.init: cut short, the Ray processes it started
            # would outlive tiledepth (the Ray it joins is not ours to stop)
            with _keep_sigterm(ray, defer=address is None), _bounded_join(ray, address):
                # "local": a Ray of our own, as --help says; address=None would join the
                # cluster RAY_ADDRESS or the last `ray start` names, and hang on a dead one
                ray.init(address=address if address is not None else "local",
                         include_dashboard=False, logging_level=logging.WARNING)
        except BaseException as exc:
            if address is None or not isinstance(exc, Exception):
                # what a failed or interrupted ray.init started stops here, not at exit
                with contextlib.suppress(Exception):
                    _shutdown(ray, faults)
            if not isinstance(exc, (ConnectionError, ValueError, RuntimeError)):
                raise
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise OptionError(f"cannot start or join {where} ({_why(exc)}); "
                              f"{_address_hint(address)}") from exc
        started = True
    elif address is not None:
        log.warning("Ray is already initialised in this process; ignoring ray_address=%r",
                    address)
    handles: list = []
    try:
        resources_total = ray.cluster_resources()
        gpus, cpus = int(resources_total.get("GPU", 0)), int(resources_total.get("CPU", 1))
        n, resources, device = actor_resources(opts.device, gpus=gpus, cpus=cpus,
                                               actors=actors)
        use_gpu = "num_gpus" in resources
        if started and address is None:
            _check_local_room(n, resources, cpus=cpus, gpus=gpus)
        if use_gpu and n > gpus:
            log.warning("%d model actors asked for, the Ray cluster has %d GPU(s): "
                        "the rest wait until GPUs join", n, gpus)
        actor_class = ray.remote(ModelActor).options(
            max_restarts=2, max_task_retries=2, **resources)  # predictions are idempotent
        load_options = {"device": device, "dtype": opts.dtype, "steps": opts.steps,
                        "ensemble": opts.ensemble, "seed": opts.seed,
                        "batch_size": opts.batch_size}
        model = _spec_for_actors(opts.model)
        handles = [actor_class.remote(model, load_options, opts.tile_size)
                   for _ in range(n)]
        each = f"{resources['num_cpus']} CPU{'s' if resources['num_cpus'] > 1 else ''}"
        infos = _wait_ready(ray, handles, f"one GPU and {each}" if use_gpu else each)
        log.info("Ray: %d model actor(s) on %s", n, "GPUs" if use_gpu else "CPUs")
        first = infos[0]
        # the name as the user spelt it (the output's tags), as the local executor records it
        name = os.fspath(opts.model) if model is not opts.model and first["name"] == model \
            else first["name"]
        if first.get("callable"):
            # as the local executor (tiledepth.plan.open_model): options a Python callable
            # does not take are refused once, not recorded in the tags of every output
            from tiledepth.plan import check_callable_options

            check_callable_options(name, opts)
        # batch size auto: each actor probed its own GPU; batches fit the smallest
        pool = RayModelPool(handles, name=name,
                            batch_size=min(info["batch_size"] for info in infos),
                            steps=first["steps"], identity=first["identity"],
                            **{attr: first[attr] for attr in CARRIED if attr in first})
        # the tile size the model cannot take stops the batch once, as the local executor's
        # does, instead of every input failing with it
        check_tile_size(pool, opts.tile_size)
        yield pool
    finally:
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        if started:
            _shutdown(ray, faults)


#: Seconds to wait for a ``host:port`` Ray address to answer before saying it cannot be reached.
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Raise OptionError where ``address`` is ``host:port`` (or ``ray://host:port``) and
    nothing answers there within :data:`CONNECT_TIMEOUT_S`: ``ray.init`` would wait for it
    forever, deaf to Ctrl-C. Other addresses (``"auto"``) are left to Ray."""
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S
                                 ).close()
    except OSError as exc:
        raise OptionError(f"cannot reach the Ray cluster at {address} "
                          f"({exc.strerror or exc}); check --ray-address") from exc


#: Ray's settings (environment variables, read by ``ray.init``) that bound joining a cluster,
#: each set where the user set none: one try (Ray's default is 20, each ~41 s, so a
#: ``host:port`` that answers but is no Ray GCS, the dashboard's 8265 say, held the batch
#: for 14 minutes) that waits 10 s for the GCS after Ray's two 5 s connection waits: ~21 s.
JOIN_LIMITS = {"RAY_gcs_server_port_wait_time_s": "1", "RAY_py_gcs_connect_timeout_s": "10"}


@contextlib.contextmanager
def _bounded_join(ray: Any, address: str | None) -> Iterator[None]:
    """Set :data:`JOIN_LIMITS` for a ``ray.init`` joining ``address`` (None: a local Ray,
    left as it is), those the user set left as they are, and put the environment back
    after. Ray reads its C++ settings (the GCS timeout) when imported: they are read again
    (``Config.initialize``, where this Ray has it; else the connect waits its default 30 s),
    and once more as it connects (a session joined keeps the 10 s GCS timeout)."""
    if address is None:
        yield
        return
    ours = {name: value for name, value in JOIN_LIMITS.items() if name not in os.environ}
    os.environ.update(ours)
    try:
        config = getattr(getattr(ray, "_raylet", None), "Config", None)
        with contextlib.suppress(Exception):  # private to Ray: the settings at import stand
            config.initialize("")
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def _why(exc: BaseException) -> str:
    r"""The line of a failed ``ray.init``'s error that says why: the last line of its root
    cause where that quotes a traceback (Ray's "Failed to connect to GCS. Last connection
    error: Traceback ..."), less the exception's name; else :func:`first_line`.

    Examples
    --------
    >>> cause = RuntimeError("Failed to connect to GCS. Last connection error: Traceback "
    ...                      "(most recent call last):\n  File ...\nray.exceptions.RpcError: "
    ...                      "Timed out while waiting for GCS to become available.\n")
    >>> try:
    ...     raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:80") from cause
    ... except ConnectionError as exc:
    ...     _why(exc)
    'Timed out while waiting for GCS to become available'
    >>> _why(RuntimeError("raylet failed to start\nmore"))
    'raylet failed to start'
    """
    root, seen = exc, [exc]
    while root.__cause__ is not None and root.__cause__ not in seen:
        root = root.__cause__
        seen.append(root)
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    if "Traceback (most recent call last)" not in str(root) or not lines:
        return first_line(exc)
    return re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1]).rstrip(".")


def _address_hint(address: str | None) -> str:
    """What to check after ``ray.init`` failed to join ``address``: for a ``host:port``,
    whether that port is the head node's GCS port (``ray start --head`` prints it).

    Examples
    --------
    >>> _address_hint("10.0.0.1:8265")
    "check --ray-address: is 8265 the head node's GCS port (6379 by default, ..."
    >>> _address_hint("auto")
    'check --ray-address'
    """
    port = (address or "").rstrip("/").rpartition(":")[2]
    if address is None or "://" in address or not port.isdigit():
        return "check --ray-address"
    return (f"check --ray-address: is {port} the head node's GCS port (6379 by default, "
            "as `ray start --head` prints it; not the dashboard's 8265)?")


def _spec_for_actors(model: Any) -> Any:
    """``model`` as the actors are to load it: a relative ``file.py:function`` or checkpoint
    folder that exists here made absolute (an actor runs in its Ray node's folder, not in
    the user's), read as :func:`tiledepth.models.load_model` reads it; anything else as it is.

    Examples
    --------
    >>> _spec_for_actors("mymodels:depth"), _spec_for_actors("/abs/m.py:f")
    ('mymodels:depth', '/abs/m.py:f')
    """
    from tiledepth.models import local_path

    spec = os.fspath(model) if isinstance(model, os.PathLike) else model
    local = local_path(spec) if isinstance(spec, str) else None
    if local is None or local[0].is_absolute():
        return model
    path = local[0].absolute()  # (symbolic links as they are: the nodes may see them alone)
    return str(path) if local[1] is None else f"{path}:{local[1]}"


@contextlib.contextmanager
def _keep_sigterm(ray: Any, *, defer: bool = False) -> Iterator[None]:
    """Keep this process's SIGTERM handler across ``ray.init``, which replaces it (in the
    main thread) with its own (``sys.exit(15)``, exit 1 once its node runs) and a C++
    failure handler that aborts the process: Ray's Python handlers are not installed where
    this process has one of its own, and the command line's handler (exit 143, partial
    outputs removed) is put back. With ``defer`` (a local Ray being started), a SIGTERM
    meanwhile is handled once ``ray.init`` returns: cut short inside it, the Ray processes
    started so far would outlive tiledepth."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    install = getattr(utils, "set_sigterm_handler", None) if callable(previous) else None
    received: list[int] = []
    try:
        if install is not None:  # Ray's installs it through this function (worker, node)
            utils.set_sigterm_handler = lambda handler: None
            if defer:
                signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
        yield
    finally:
        if install is not None:
            utils.set_sigterm_handler = install
        if previous is not None:  # signal.signal installs it again at the C level too
            signal.signal(signal.SIGTERM, previous)
        if received:  # the SIGTERM that came while Ray started, handled now
            previous(signal.SIGTERM, None)


def _shutdown(ray: Any, faults: bool | None = None) -> None:
    """``ray.shutdown()``, this process's SIGTERM handler kept. Ray's shutdown puts SIGTERM
    back to the default action at the C level (it uninstalls the failure handler that
    ``ray.init`` set) while Python still names the handler it had: after a Ray batch, a
    SIGTERM killed the process at once, and the caller's handler (a script's, the command
    line's) never ran. Installed again here, as :func:`_keep_sigterm` does after
    ``ray.init``; only the main thread can.

    ``faults``: whether :mod:`faulthandler` was enabled before ``ray.init``, which enables
    it and leaves it enabled after its shutdown. Where it was not, it is disabled again,
    which also puts back the SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL handlers it saved
    (Ray's C++ failure handler had stayed on SIGBUS). None: left as it is. Ray's C++ handler
    stays on SIGTRAP, below Python (``signal.getsignal`` names the default there): not
    undone here."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.shutdown()
    finally:
        if handler is not None:  # None: a handler not set from Python, left as it is
            signal.signal(signal.SIGTERM, handler)
        if faults is False and faulthandler.is_enabled():
            faulthandler.disable()


def _check_local_room(n: int, resources: dict[str, float], *, cpus: int, gpus: int) -> None:
    """Raise OptionError where a local Ray (started here: no node will join) has too few CPUs
    or GPUs for ``n`` actors of ``resources`` each: the actors beyond would never start, and
    the batch would wait for them forever."""
    for what, key, have in (("CPU", "num_cpus", cpus), ("GPU", "num_gpus", gpus)):
        need = int(n * resources.get(key, 0))
        if need > have:
            raise OptionError(f"--ray-actors {n} needs {need} {what}{'s' if need > 1 else ''}; "
                              f"this Ray has {have}; lower --ray-actors or join a larger "
                              "cluster with --ray-address")


def _wait_ready(ray: Any, handles: list, needs: str) -> list[dict[str, Any]]:
    """Wait for every actor to hold its model; raise its load error as itself. ``needs``:
    what each actor takes of the cluster (``"one GPU and 4 CPUs"``), for the warning."""
    refs = [h.info.remote() for h in handles]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=START_WARNING_S)
    if waiting:
        log.warning("waiting for Ray to start %d of %d model actors (each needs %s); "
                    "lower --ray-actors if the cluster has fewer", len(waiting), len(refs),
                    needs)
    return _get(ray, refs, failed="a Ray model actor failed to start",
                died="a Ray model actor died while starting")


def _get(ray: Any, refs: Any, *, failed: str, died: str) -> Any:
    """``ray.get(refs)``; an error raised in an actor is raised here as itself, a failure
    of Ray's own as a one-line ModelError (``failed: why``, ``died (why); check ...``)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise ModelError(f"{failed}: {first_line(exc)}") from exc
    except ray.exceptions.RayActorError as exc:
        raise ModelError(f"{died} ({first_line(exc)}); check the Ray logs") from exc

