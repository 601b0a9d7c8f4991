"""Value semantics for the library's small result and state classes.

These classes were dataclasses. ``@dataclass`` builds ``__init__``, ``__eq__``
and ``__repr__`` from source text with ``exec`` when the module is imported:
for the nine classes of :mod:`rmtabtool.safefile` and
:mod:`rmtabtool.operations` that was 5-8 ms of every run, a quarter of what
rmtabtool adds to the start-up of a resource agent's 10-second monitor. Here
each class writes its own ``__init__`` (so type checkers see the exact
signature) and names its fields once, in ``__slots__``; equality, ``repr``,
hashing, immutability and pickling come from the two bases below.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record:
    """Equality and ``repr`` over the fields named in ``__slots__``, in order.

    Two records are equal when they are of the same class and every field is
    equal, as with a dataclass. Mutable: not hashable.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._values()))


class FrozenRecord(Record):
    """A :class:`Record` that cannot be changed after ``__init__``, and is hashable.

    ``__init__`` sets its fields with ``object.__setattr__``.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __hash__(self) -> int:  # type: ignore[override]  # Record's is None
        return hash(self._values())


def _rebuild(cls: type[Record], values: tuple[Any, ...]) -> Record:
    """Unpickle or copy a record without calling ``__init__`` (frozen ones too)."""
    self = object.__new__(cls)
    for name, value in zip(cls.__slots__, values):
        object.__setattr__(self, name, value)
    return self
