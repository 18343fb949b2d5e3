"""Record behaves like the typing.NamedTuple it replaced, without compiling anything.

Every behaviour is checked by defining the same class both ways (`nt.Point` and
`rec.Point`, both named Point so their reprs and error messages can be compared
verbatim) and comparing what each does with the same input; hypothesis drives the
argument combinations.  The package's own records are then checked for the things a
caller relies on: `_replace` round trips, no per-instance `__dict__`, pickling.
"""

import builtins
import collections
import copy
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from istio_iptables.cli.flags import OPTIONS, Option, Settings
from istio_iptables.cni.protocol import Request
from istio_iptables.inject.values import InjectorValues, MeshDefaults
from istio_iptables.kernel.iptables_restore import Binary
from istio_iptables.kernel.spawn import Finished
from istio_iptables.model.config import CaptureConfig, Cidrs, OwnerGroups, RunOptions
from istio_iptables.model.explain import Connection, Pod
from istio_iptables.model.hostfacts import HostFacts
from istio_iptables.model.nft_plan import NftRule
from istio_iptables.model.policy_routing import PolicyRule, Routing
from istio_iptables.model.record import Record, _Record

REPO = Path(__file__).resolve().parent.parent


class nt:  # a namespace, so both twins are named Point
    class Point(NamedTuple):
        a: int
        b: str
        c: tuple[int, ...] = ()
        d: int | None = None

        @property
        def total(self) -> int:
            return self.a + sum(self.c)

        def describe(self) -> str:
            return f"{self.b}:{self.total}"

    class Bare(NamedTuple):
        x: int
        y: int = 0


class rec:
    class Point(Record):  # nt.Point's body, methods first: the order of a body is free
        @property
        def total(self) -> int:
            return self.a + sum(self.c)

        def describe(self) -> str:
            return f"{self.b}:{self.total}"

        a: int
        b: str
        c: tuple[int, ...] = ()
        d: int | None = None

    class Bare(Record):
        x: int
        y: int = 0


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did: ("ok", (type name, repr, plain tuple)) or ("raised", (type, message))."""
    try:
        value = call()
    except Exception as e:  # the point is to compare them
        return "raised", (type(e), str(e))
    return "ok", (type(value).__name__, repr(value), tuple(value) if isinstance(value, tuple) else value)


VALUES = st.one_of(st.integers(-3, 3), st.text("ab", max_size=2), st.tuples(st.integers(0, 2)), st.none())
NAMES = st.sampled_from(["a", "b", "c", "d", "e", "_a", "LIMIT", "self", "cls", "_cls"])


@settings(max_examples=600, deadline=None)
@given(args=st.lists(VALUES, max_size=6), kwargs=st.dictionaries(NAMES, VALUES, max_size=5))
def test_construction_matches_namedtuple_value_or_error_word_for_word(args: list[Any], kwargs: dict[str, Any]) -> None:
    """Positional, keyword, missing, unknown and duplicate arguments: the same record,
    or the same TypeError with the same message."""
    assert outcome(lambda: rec.Point(*args, **kwargs)) == outcome(lambda: nt.Point(*args, **kwargs))


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(NAMES, VALUES, max_size=5))
def test_replace_matches_namedtuple(changes: dict[str, Any]) -> None:
    """_replace(**changes): the same new record, or ValueError naming the unknown fields."""
    r, n = rec.Point(1, "x", (2,)), nt.Point(1, "x", (2,))
    assert outcome(lambda: r._replace(**changes)) == outcome(lambda: n._replace(**changes))
    assert tuple(r) == tuple(n) == (1, "x", (2,), None)  # the original is untouched


def test_replace_refuses_positional_arguments_like_namedtuple() -> None:
    with pytest.raises(TypeError):
        rec.Point(1, "x")._replace(2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        nt.Point(1, "x")._replace(2)  # type: ignore[call-arg]


def test_class_attributes_match_namedtuple() -> None:
    for name in ("_fields", "_field_defaults", "__match_args__", "__name__", "__slots__"):
        assert getattr(rec.Point, name) == getattr(nt.Point, name), name
    assert rec.Bare.__doc__ == nt.Bare.__doc__ == "Bare(x, y)"  # no docstring: namedtuple's
    assert type(rec.Point.a) is type(nt.Point.a)  # the same C-level field getter


@given(a=st.integers(), b=st.text(max_size=3), c=st.lists(st.integers(0, 9), max_size=3).map(tuple))
def test_tuple_behaviour_matches_namedtuple(a: int, b: str, c: tuple[int, ...]) -> None:
    r: Any = rec.Point(a, b, c)  # Any: mypy refuses to compare two NamedTuple types
    n: Any = nt.Point(a, b, c)
    plain = (a, b, c, None)
    assert r == n == plain
    assert not r != plain  # noqa: SIM202  (tuple's __ne__, not __eq__)
    assert hash(r) == hash(n) == hash(plain)
    assert {r: 1}[plain] == 1
    assert (r < rec.Point(a + 1, b)) == (n < nt.Point(a + 1, b)) is True
    assert sorted([rec.Point(a, "z"), r]) == sorted([nt.Point(a, "z"), n])
    a2, b2, c2, d2 = r
    assert (a2, b2, c2, d2) == plain
    assert (r[0], r[-1], r[1:3], len(r), list(r), b in r) == (n[0], n[-1], n[1:3], len(n), list(n), b in n)
    assert r + (1,) == n + (1,) == (*plain, 1) and type(r + (1,)) is tuple  # noqa: RUF005
    assert (r.a, r.b, r.c, r.d, r.total, r.describe()) == (n.a, n.b, n.c, n.d, n.total, n.describe())
    assert repr(r) == repr(n) and str(r) == str(n)
    assert r._asdict() == n._asdict()


def test_repr_quotes_values_as_namedtuple_does() -> None:
    assert repr(rec.Point(1, "it's", (2, 3))) == repr(nt.Point(1, "it's", (2, 3))) \
        == """Point(a=1, b="it's", c=(2, 3), d=None)"""


def test_match_statement_binds_fields_positionally() -> None:
    match rec.Point(1, "x"):
        case rec.Point(a, b, c, d=None):
            assert (a, b, c) == (1, "x", ())
        case _:
            pytest.fail("did not match")


def test_make_matches_namedtuple() -> None:
    assert outcome(lambda: rec.Point._make([1, "x", (), 4])) == outcome(lambda: nt.Point._make([1, "x", (), 4]))
    assert outcome(lambda: rec.Point._make([1])) == outcome(lambda: nt.Point._make([1]))
    assert outcome(lambda: rec.Point._make([1])) [0] == "raised"


def test_instances_have_no_dict_and_refuse_new_attributes() -> None:
    r: Any = rec.Point(1, "x")
    n: Any = nt.Point(1, "x")
    assert not hasattr(r, "__dict__") and not hasattr(n, "__dict__")
    for obj in (r, n):
        with pytest.raises(AttributeError):
            obj.e = 1
        with pytest.raises(AttributeError):
            obj.a = 2


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_and_copy_round_trip(protocol: int) -> None:
    r = rec.Point(1, "x", (2,), 3)
    back = pickle.loads(pickle.dumps(r, protocol))
    assert type(back) is rec.Point and back == r and back.c == (2,)
    assert type(copy.copy(r)) is rec.Point and copy.deepcopy(r) == r


def test_class_definition_errors_match_namedtuple() -> None:
    """Non-default after default: TypeError; a field starting with `_`: ValueError;
    redefining what the machinery owns: AttributeError.  Same types as NamedTuple."""
    bodies = {
        "default_then_required": "    a: int = 1\n    b: int\n",
        "underscore": "    _a: int\n",
        "own_replace": "    a: int\n    def _replace(self): pass\n",
        "own_new": "    a: int\n    def __new__(cls): pass\n",
    }
    for name, body in bodies.items():
        raised = []
        for base in ("NamedTuple", "Record"):
            source = f"from typing import NamedTuple\nfrom istio_iptables.model.record import Record\n" \
                     f"class C({base}):\n{body}"
            with pytest.raises(Exception) as caught:  # the types are compared below
                exec(source, {})
            raised.append(caught.type)
        assert raised[0] is raised[1], name


def test_class_constants_stay_class_attributes() -> None:
    """An unannotated name in the body is a class attribute, not a field, in both.
    (mypy refuses such a statement in a NamedTuple body, hence exec: the package
    keeps its constants at module level.)"""
    made = {}
    for base in ("NamedTuple", "Record"):
        space: dict[str, Any] = {"NamedTuple": NamedTuple, "Record": Record}
        exec(f"class C({base}):\n    a: int\n    LIMIT = 7\n    def over(self):\n        return self.a > self.LIMIT\n",
             space)
        made[base] = space["C"]
    for cls in made.values():
        assert cls._fields == ("a",) and cls.LIMIT == 7 and cls(8).over() and repr(cls(8)) == "C(a=8)"


def test_subclassing_behaves_as_with_namedtuple() -> None:
    """A subclass of a record is a plain subclass (no new fields, a __dict__), and a
    record cannot mix in other bases: both as with NamedTuple."""

    class SubN(nt.Bare):
        z: int = 5

    class SubR(rec.Bare):
        z: int = 5

    assert repr(SubR(1)) == repr(SubN(1)).replace("SubN", "SubR") == "SubR(x=1, y=0)"
    assert SubR._fields == SubN._fields == ("x", "y")
    assert hasattr(SubR(1), "__dict__") and hasattr(SubN(1), "__dict__")

    class Mixin:
        pass

    for source in ("class M(NamedTuple, Mixin):\n    a: int\n", "class M(Record, Mixin):\n    a: int\n"):
        with pytest.raises(TypeError):
            exec(source, {"NamedTuple": NamedTuple, "Record": Record, "Mixin": Mixin})


def test_defining_a_record_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost Record removes: namedtuple `eval`s a generated `__new__`.  With eval,
    exec and compile refused, a NamedTuple cannot be defined; a Record can."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled at class creation")

    with monkeypatch.context() as patch:
        for name in ("eval", "exec", "compile"):
            patch.setattr(builtins, name, refuse)

        class Fresh(Record):
            a: int
            b: str = "b"

        with pytest.raises(AssertionError):
            class Old(NamedTuple):
                a: int
    assert Fresh(1) == (1, "b")


def test_string_annotations_are_never_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `from __future__ import annotations` (or a name not defined yet) a record
    only needs the names: nothing is evaluated or checked."""
    (tmp_path / "future_record.py").write_text(textwrap.dedent("""\
        from __future__ import annotations
        from istio_iptables.model.record import Record

        class Later(Record):
            first: NotDefinedAnywhere
            second: list[Undefined] = []
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__("future_record")
    assert module.Later._fields == ("first", "second")
    assert module.Later(1) == (1, []) and module.Later._field_defaults == {"second": []}


# The package's records: (class, a valid instance).
REAL = [
    CaptureConfig(), RunOptions(), HostFacts(), Cidrs(), OwnerGroups(), Pod(), Routing(),
    InjectorValues(), MeshDefaults(), Settings(CaptureConfig(), RunOptions()), OPTIONS[0],
    Finished(0, "out", "err"), Binary(4, "nft"), Connection(4, "tcp", "10.0.0.1", 80),
    NftRule("nat", "PREROUTING", "tcp dport 80 accept"), PolicyRule(4, 100, "lookup", 133, fwmark=0x539),
    Request("ADD", "1.0.0", {"cniVersion": "1.0.0"}, args={"K8S_POD_NAME": "p"}),
]


@pytest.mark.parametrize("record", REAL, ids=lambda r: type(r).__name__)
def test_real_records_round_trip_replace_and_match_a_namedtuple_twin(record: Any) -> None:
    cls = type(record)
    assert isinstance(record, _Record) and not hasattr(record, "__dict__")
    assert record._replace() == record and type(record._replace()) is cls
    assert record._replace(**record._asdict()) == record
    assert cls(*record) == cls(**record._asdict()) == cls._make(record) == record
    for index, field in enumerate(cls._fields):  # each field replaced, then put back
        changed = record._replace(**{field: "changed"})
        assert changed[index] == getattr(changed, field) == "changed"
        assert changed[:index] + changed[index + 1:] == record[:index] + record[index + 1:]
        assert changed._replace(**{field: record[index]}) == record
    with pytest.raises(ValueError, match="not_a_field"):
        record._replace(not_a_field=1)
    twin = collections.namedtuple(cls.__name__, cls._fields, defaults=cls._field_defaults.values())  # type: ignore[misc]
    assert repr(twin(*record)) == repr(record)
    assert twin._field_defaults == cls._field_defaults
    assert pickle.loads(pickle.dumps(record)) == record


def test_every_record_of_the_package_is_slotted() -> None:
    """No record grows a per-instance __dict__ (the metaclass adds `__slots__ = ()`)."""
    records = [c for c in _Record.__subclasses__() if c.__module__.startswith("istio_iptables.")]
    assert {type(r) for r in REAL} <= set(records)
    assert [c.__qualname__ for c in records if c.__dictoffset__ or "__slots__" not in vars(c)] == []
    assert CaptureConfig._field_defaults["proxy_port"] == CaptureConfig().proxy_port == 15001
    assert Option in set(records)  # type: ignore[comparison-overlap]  # mypy: Option is a NamedTuple


MYPY_SNIPPET = """\
from istio_iptables.model.record import Record


class P(Record):
    a: int
    b: str = "x"


P()
P(1, 2)
P(1, c=3)
P(1)._replace(c=3)
P(1)._replace(a="s")
ok: tuple[int, str] = P(1)
reveal_type(P(1)._replace(b="y").a)
"""


def test_mypy_checks_a_record_as_the_namedtuple_it_is(tmp_path: Path) -> None:
    """Type checkers see typing.NamedTuple: the constructor's signature, `_replace`'s
    keywords and the fields' types are checked, exactly as for a NamedTuple."""
    api = pytest.importorskip("mypy.api")
    outputs = []
    for name, source in (("as_record", MYPY_SNIPPET),
                         ("as_namedtuple", MYPY_SNIPPET.replace("from istio_iptables.model.record import Record",
                                                                "from typing import NamedTuple as Record"))):
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        stdout, _, _ = api.run(["--strict", "--no-error-summary", "--cache-dir", str(REPO / ".mypy_cache"),
                                str(path)])
        # "LINE: severity: message" (mypy may replay a cached report under an older tmp path)
        outputs.append([line.split(f"{name}.py:", 1)[1] for line in stdout.splitlines()])
    assert outputs[0] == outputs[1]
    lines = outputs[0]
    assert [line.split(":")[0] for line in lines] == ["9", "10", "11", "12", "13", "15"], lines
    assert 'Missing positional argument "a"' in lines[0]
    assert 'Unexpected keyword argument "c" for "_replace"' in lines[3]
    assert 'Revealed type is "int"' in lines[5]
