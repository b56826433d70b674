"""A node answers a request it has already answered with the release it made then.

Sending the same noised output twice reveals nothing new (post-processing), so a repeat costs
no privacy; computing it afresh would draw new noise and spend the budget again. This is what
lets an interrupted campaign resume (`fedrisk simulate --resume`): its admission, statistics
and the round that was trained but never aggregated are asked again, answered from here, and
charged once. The key is everything the release depends on (the campaign, the request's
inputs, the model received), so a different request is computed and charged as ever.

Replies live in the institution's own home (`releases/`), written by its node alone: a file
there is trusted as the node's own (pickle), as its ledger is. The charges of a release stay
pending until its reply is kept here, and only then may it leave; a computation that died
before that left nothing anyone saw, so its pending charges are voided when the request comes
again and the release is computed (and charged) once more.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

FOLDER = "releases"
T = TypeVar("T")
_KEY: ContextVar[str | None] = ContextVar("release_key", default=None)


def current_key() -> str | None:
    """The key of the release being computed, for its charges (`PrivacyLedger.charge`)."""
    return _KEY.get()


def fingerprint(value: Any) -> str:
    """SHA-256 of a request's inputs: arrays and tensors by dtype, shape and bytes, mappings in key order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"m{len(value)}".encode())
        for key in sorted(value, key=str):
            _feed(digest, str(key))
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"l{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif hasattr(value, "__dataclass_fields__"):
        _feed(digest, {k: getattr(value, k) for k in value.__dataclass_fields__})
    elif value is None or isinstance(value, str | int | float | bool):
        text = repr(value).encode()
        digest.update(f"s{len(text)}".encode() + text)
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def replayed(kind: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a release of `fedrisk.institution` (first argument the node's session): the same
    request answered again from the home, computed and charged only the first time."""

    def wrap(release: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(release)
        def answer(session: Any, *args: Any, **kwargs: Any) -> T:
            key = fingerprint([kind, session.name, args, kwargs])
            path = Path(session.home) / FOLDER / f"{kind}-{key[:40]}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            # one release at a time per home: a copy of the request arriving while the first is
            # still computing waits for it and is answered with its release, never voids its charge
            with open(path.parent / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                return _answer(release, session, key, path, args, kwargs)

        return answer

    return wrap


def _answer(release: Callable[..., T], session: Any, key: str, path: Path, args: tuple, kwargs: dict) -> T:
    """The kept release, or the release computed, kept, and only then settled (under the home's lock;
    a decorated release never calls another: the lock is not reentrant)."""
    if path.is_file():
        with open(path, "rb") as handle:
            return pickle.load(handle)
    ledger = session.ledger()
    ledger.void_pending(key)  # an earlier try that died before its release was kept
    token = _KEY.set(key)
    try:
        result = release(session, *args, **kwargs)
    finally:
        _KEY.reset(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    ledger.settle(key)  # only now may the release leave the node
    return result
