"""Record: typing.NamedTuple's runtime behaviour without its import cost.

Every value object of the package (flags, plans, host facts, ...) is an immutable
tuple with named fields.  `typing.NamedTuple` gives exactly that, but defining one
class costs 0.7-0.9 M instructions at import (valgrind): `collections.namedtuple`
builds the source of a `__new__` and `eval`s it, and typing checks every annotation.
The init path defines over a dozen before doing any work, and every 10 ms of CPU is
100 ms of pod start under `cpu: 100m`.

A `Record` subclass is built by a metaclass from the names of its annotations, with
nothing compiled: the fields become `collections._tuplegetter` descriptors (the C
getters namedtuple uses), `__new__` is a closure over the field names and defaults
with a fast path for all-positional calls, and `_replace`, `_make`, `_asdict`,
`__repr__` and pickling support are written once, in the base.  An 8-field class with
a property costs ~0.17 M instructions (a plain tuple subclass with the same body
0.09 M, the NamedTuple 0.9 M).  Annotations are never evaluated, so they may be
strings (`from __future__ import annotations`) or name things defined later.

    class Cidrs(Record):
        wildcard: bool = False
        v4: tuple[str, ...] = ()

Type checkers see `typing.NamedTuple` itself (the `TYPE_CHECKING` import below), so
constructor calls, field types and `_replace` are checked as for a NamedTuple (and
mypy, as for a NamedTuple, refuses unannotated class constants in the body: keep
them at module level).  Not supported, as with NamedTuple: fields added by a subclass
of a record (it is a plain subclass), other bases mixed in; and no generic records.
"""

from __future__ import annotations

import sys
from collections import _tuplegetter  # type: ignore[attr-defined]  # namedtuple's C getter (or its own fallback)
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: a TypeVar with a bound costs 0.06 M at import
    from typing import TypeVar

    _R = TypeVar("_R", bound="_Record")
_tuple_new = tuple.__new__

# Names a record's body may not define, as typing.NamedTuple refuses them: the
# machinery below owns them.
_RESERVED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                       "_make", "_replace", "_asdict", "_source"})


class _RecordMeta(type):
    """Turns a direct subclass of Record into a tuple with named fields (see the module doc)."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _RecordMeta:
        if not any(isinstance(base, _RecordMeta) for base in bases):  # Record itself
            return super().__new__(mcls, name, bases, namespace)
        if bases != (_Record,):
            if _Record in bases:
                raise TypeError("a Record can only inherit from Record")
            # A subclass of a record: a plain subclass that adds no fields, as a
            # subclass of a NamedTuple is.
            return super().__new__(mcls, name, bases, namespace)
        reserved = _RESERVED.intersection(namespace)
        if reserved:
            raise AttributeError(f"Cannot overwrite Record attribute {min(reserved)}")
        fields = _field_names(namespace)
        defaults: list[Any] = []
        for index, field in enumerate(fields):
            if field[0] == "_":
                raise ValueError(f"Field names cannot start with an underscore: {field!r}")
            if field in namespace:
                defaults.append(namespace[field])
            elif defaults:
                raise TypeError(f"Non-default namedtuple field {field} cannot follow default field"
                                f"{'s' if len(defaults) > 1 else ''} {', '.join(fields[index - len(defaults):index])}")
            namespace[field] = _tuplegetter(index, None)
        namespace["__slots__"] = ()  # no per-instance __dict__: a record is just its tuple
        namespace["_fields"] = namespace["__match_args__"] = fields
        namespace["_field_defaults"] = field_defaults = dict(zip(fields[len(fields) - len(defaults):], defaults,
                                                                 strict=True))
        namespace["__new__"] = _constructor(fields, field_defaults)
        namespace.setdefault("__doc__", f"{name}({', '.join(fields)})")
        return super().__new__(mcls, name, bases, namespace)


def _field_names(namespace: dict[str, Any]) -> tuple[str, ...]:
    """The annotated names of a class body, in order, without evaluating them."""
    annotations = namespace.get("__annotations__")
    if annotations is None and sys.version_info >= (3, 14):  # PEP 649: a lazy __annotate__ instead
        import annotationlib

        annotate = annotationlib.get_annotate_from_class_namespace(namespace)
        if annotate is not None:
            annotations = annotationlib.call_annotate_function(annotate, annotationlib.Format.FORWARDREF)
    return tuple(annotations or ())


def _constructor(fields: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    """The class's `__new__`.  All-positional calls (the planner's) build the tuple
    directly, with the defaults' tail precomputed per argument count; keywords are
    bound by one loop over the fields; anything else is an error, worded by
    `_call_error`.  A NamedTuple's generated `__new__` has its arguments bound in C:
    against its ~3.1 k instructions a call, this one costs ~3.6 k with every field
    given, ~4.1 k with defaults filled in, ~8.7 k with keywords (~4.1 k)."""
    count = len(fields)
    first_default = count - len(defaults)
    tail_values = tuple(defaults.values())
    # tails[k]: what k positional arguments lack, None when they are too few.
    tails = tuple(None if given < first_default else tail_values[given - first_default:] for given in range(count))

    def __new__(cls: type[_R], /, *args: Any, **kwargs: Any) -> _R:
        given = len(args)
        if not kwargs:
            if given == count:
                return _tuple_new(cls, args)
            if given < count:
                tail = tails[given]
                if tail is not None:
                    return _tuple_new(cls, args + tail)
        elif given <= count:
            values = list(args)
            used = 0
            for field in fields[given:]:
                if field in kwargs:
                    values.append(kwargs[field])
                    used += 1
                elif field in defaults:
                    values.append(defaults[field])
                else:
                    break  # a field without a default was not given
            else:
                if used == len(kwargs):  # every keyword named a field not given positionally
                    return _tuple_new(cls, values)
        raise _call_error(cls, args, kwargs)

    return __new__


def _call_error(cls: type[_Record], args: tuple[Any, ...], kwargs: dict[str, Any]) -> TypeError:
    """The TypeError Python raises for the same call of NamedTuple's generated
    `__new__`: same checks in the same order, same words."""
    fields = cls._fields
    where = f"{cls.__name__}.__new__()"
    for key in kwargs:
        if key == "_cls":  # the name of namedtuple's first parameter
            return TypeError(f"{where} got multiple values for argument '_cls'")
        if key not in fields:
            return TypeError(f"{where} got an unexpected keyword argument {key!r}")
        if fields.index(key) < len(args):
            return TypeError(f"{where} got multiple values for argument {key!r}")
    if len(args) > len(fields):
        required = len(fields) - len(cls._field_defaults)
        takes = f"{len(fields) + 1}" if required == len(fields) else f"from {required + 1} to {len(fields) + 1}"
        return TypeError(f"{where} takes {takes} positional arguments but {len(args) + 1} were given")
    missing = [repr(f) for f in fields[len(args):] if f not in kwargs and f not in cls._field_defaults]
    names = (missing[0] if len(missing) == 1 else " and ".join(missing) if len(missing) == 2
             else f"{', '.join(missing[:-1])}, and {missing[-1]}")
    return TypeError(f"{where} missing {len(missing)} required positional argument"
                     f"{'s' if len(missing) > 1 else ''}: {names}")


class _Record(tuple[Any, ...], metaclass=_RecordMeta):
    """The base every record derives from at runtime: the methods namedtuple would
    generate per class, written once."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, Any] = {}  # noqa: RUF012  (replaced per class, never mutated)

    @classmethod
    def _make(cls: type[_R], iterable: Iterable[Any]) -> _R:
        result = _tuple_new(cls, iterable)
        if len(result) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(result)}")
        return result

    def _replace(self: _R, /, **changes: Any) -> _R:
        result = _tuple_new(type(self), map(changes.pop, self._fields, self))
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return result

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join([f'{n}={v!r}' for n, v in zip(self._fields, self, strict=True)])})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        """Pickle and copy rebuild a record from its plain tuple (as namedtuple's do)."""
        return tuple(self)


if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    Record = _Record

__all__ = ["Record"]
