"""An iptables argv (``-p tcp --dport 15008 -j RETURN``) into a python-iptables rule.

Notes on python-iptables (1.x) and libxtables (1.8) that shape this module:

* Negation: addresses, interfaces and the protocol take a leading ``"!"`` in the
  value (``rule.dst = "!127.0.0.1/32"``); a match or target option is negated by a
  leading ``"!"`` element of the value passed to ``parse`` (``["!", "15008"]``).
* Jumps to user chains and the verdicts ACCEPT/DROP/RETURN/QUEUE are "standard"
  targets that libiptc maps by name.  A ``-j`` name that is neither a verdict, nor
  a chain of the rule's table, nor a loadable target extension is rejected here.
* python-iptables' IPv6 rules store interface masks as 0x01 bytes where iptables
  writes 0xff: the kernel then compares only the lowest bit of each character, and
  ``ip6tables -C``/``-D`` never find the rule (a re-run saw drift, a cleanup left the
  ``-i``/``-o`` RETURN rules of ``-c``/``-k``).  :func:`_set_interface` writes the
  masks as iptables does, for both families.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_VERDICTS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
# Protocols whose implicit match extension has a different name than the protocol.
_PROTO_MATCH_ALIASES = {"icmpv6": "icmp6", "ipv6-icmp": "icmp6"}
_IFNAMSIZ = 16
# IPT_INV_VIA_IN / IPT_INV_VIA_OUT (the same values as IP6T_INV_VIA_*).
_INV_VIA = {"in": 0x01, "out": 0x02}


class ConvertError(Exception):
    """A params tuple cannot be expressed; `missing_chain` when a jump target is absent."""

    def __init__(self, message: str, *, missing_chain: bool = False) -> None:
        super().__init__(message)
        self.missing_chain = missing_chain


# Option names per (extension kind, name): reading them walks C arrays through ctypes.
_OPTION_NAMES: dict[tuple[str, str], tuple[str, ...]] = {}


def _option_names(ext: Any) -> tuple[str, ...]:
    """Long option names (without ``--``) a python-iptables Match or Target accepts."""
    key = (type(ext).__name__, ext.name)
    cached = _OPTION_NAMES.get(key)
    if cached is not None:
        return cached
    names: list[str] = []
    tables = [getattr(ext, "_orig_options", None)]
    module = getattr(ext, "_module", None)
    if module is not None:
        tables += [getattr(module, "x6_options", None), getattr(module, "extra_opts", None)]
    for entries in tables:
        if not entries:
            continue
        i = 0
        while True:
            raw = entries[i].name
            if not raw:
                break
            name = raw.decode()
            if name not in names:
                names.append(name)
            i += 1
    _OPTION_NAMES[key] = tuple(names)
    return _OPTION_NAMES[key]


def _is_option(token: str) -> bool:
    return token.startswith("--") or (len(token) == 2 and token[0] == "-" and token[1].isalpha())


def _set_interface(rule: Any, family: int, direction: str, value: str) -> None:
    """-i/-o as iptables writes them: name NUL-padded, mask 0xff over the name and
    its NUL (over the prefix only for a trailing '+' wildcard)."""
    inverted = value.startswith("!")
    name = value[1:] if inverted else value
    if not name or len(name) >= _IFNAMSIZ:
        raise ConvertError(f"bad interface name {name!r}")
    masklen = len(name) + 1
    if name.endswith("+"):
        name = name[:-1]
        masklen = len(name)
    header = rule.entry.ip if family == 4 else rule.entry.ipv6
    setattr(header, f"{direction}iface", name.encode().ljust(_IFNAMSIZ, b"\0"))
    setattr(header, f"{direction}iface_mask", (b"\xff" * masklen).ljust(_IFNAMSIZ, b"\0"))
    if inverted:
        header.invflags |= _INV_VIA[direction]
    else:
        header.invflags &= ~_INV_VIA[direction] & 0xFF


class Converter:
    """Builds one python-iptables rule from an iptables argv, iptables' way."""

    def __init__(self, iptc: Any, family: int, table: Any, rule_cls: Any, params: Sequence[str]) -> None:
        self.iptc = iptc
        self.family = family
        self.table = table
        self.rule_cls = rule_cls
        self.params = params
        self.rule: Any = None
        self.matches: list[Any] = []
        self.target: Any = None
        self.proto: str | None = None
        self.proto_inverted = False
        self.implicit_loaded = False

    def convert(self) -> Any:
        self.rule = self.rule_cls()
        self.rule._lookup_tables = [self.table]
        params = list(self.params)
        invert = False
        i = 0
        while i < len(params):
            token = params[i]
            i += 1
            if token == "!":
                if invert:
                    raise ConvertError("multiple consecutive '!' are not allowed")
                invert = True
                continue
            if not _is_option(token):
                raise ConvertError(f"unexpected argument {token!r}")
            inline: str | None = None
            if token.startswith("--") and "=" in token:
                token, inline = token.split("=", 1)
            values: list[str] = [] if inline is None else [inline]
            while i < len(params) and params[i] != "!" and not _is_option(params[i]):
                values.append(params[i])
                i += 1
            self._option(token, values, invert)
            invert = False
        if invert:
            raise ConvertError("'!' at the end of the rule negates nothing")
        if self.target is None:
            self.rule.create_target("")  # no -j: a rule that only counts
        return self.rule

    def _one(self, option: str, values: list[str]) -> str:
        if len(values) != 1:
            raise ConvertError(f"option {option} takes exactly one argument, got {values!r}")
        return values[0]

    def _option(self, option: str, values: list[str], invert: bool) -> None:
        neg = "!" if invert else ""
        if option in ("-s", "--source", "--src"):
            value = self._one(option, values)
            if "," in value:
                raise ConvertError(f"{option} with several addresses ({value}) is not supported")
            self.rule.src = neg + value
        elif option in ("-d", "--destination", "--dst"):
            value = self._one(option, values)
            if "," in value:
                raise ConvertError(f"{option} with several addresses ({value}) is not supported")
            self.rule.dst = neg + value
        elif option in ("-i", "--in-interface"):
            _set_interface(self.rule, self.family, "in", neg + self._one(option, values))
        elif option in ("-o", "--out-interface"):
            _set_interface(self.rule, self.family, "out", neg + self._one(option, values))
        elif option in ("-p", "--protocol"):
            value = self._one(option, values).lower()
            try:
                self.rule.protocol = neg + value
            except ValueError:  # a name python-iptables does not know, e.g. ipv6-icmp
                import _socket

                try:
                    number = _socket.getprotobyname(value)
                except OSError:
                    raise ConvertError(f"unknown protocol {value!r}") from None
                self.rule.protocol = f"{neg}{number}"
            self.proto = self.rule.protocol.lstrip("!")
            self.proto_inverted = invert
        elif option in ("-f", "--fragment"):
            if self.family != 4 or values or invert:
                raise ConvertError(f"{neg and '! '}{option} is only supported un-negated for IPv4")
            self.rule.fragment = True
        elif option in ("-m", "--match"):
            if invert:
                raise ConvertError("'!' before -m is not allowed")
            match = self.iptc.Match(self.rule, self._one(option, values))
            self.rule.add_match(match)
            self.matches.append(match)
        elif option in ("-j", "--jump", "-g", "--goto"):
            if invert:
                raise ConvertError(f"'!' before {option} is not allowed")
            if self.target is not None:
                raise ConvertError("more than one -j/-g")
            self._set_target(self._one(option, values), goto=option in ("-g", "--goto"))
        elif option.startswith("--"):
            self._module_option(option[2:], values, invert)
        else:
            raise ConvertError(f"unknown option {option}")

    def _set_target(self, name: str, *, goto: bool) -> None:
        if not name:
            raise ConvertError("empty target name")
        if name in _VERDICTS and not goto:
            self.target = self.rule.create_target(name)
            return
        if self.table.is_chain(name) and not self.table.builtin_chain(name):
            self.target = self.rule.create_target(name, goto=goto)
            return
        if goto:
            raise ConvertError(f"goto target {name!r} is not a user chain of table {self.table.name!r}",
                               missing_chain=True)
        xt = self.iptc.xtables.xtables(self.rule.nfproto)
        if not xt.find_target(name):
            raise ConvertError(
                f"{name!r} is neither a chain of table {self.table.name!r} nor a target extension",
                missing_chain=True,
            )
        self.target = self.rule.create_target(name)

    def _candidates(self) -> list[Any]:
        """Extensions an option may belong to: the newest loaded wins, as in iptables."""
        found: list[Any] = [] if self.target is None else [self.target]
        found += reversed(self.matches)
        return found

    def _implicit_match(self) -> Any:
        """Load the protocol's own match (``-p tcp`` -> ``-m tcp``) as iptables does on demand."""
        if self.implicit_loaded or self.proto is None or self.proto_inverted:
            return None
        name = self.proto
        if self.family == 6:
            name = _PROTO_MATCH_ALIASES.get(name, name)
        if name in ("all", "0") or any(m.name == name for m in self.matches):
            return None
        try:
            return self.iptc.Match(self.rule, name)
        except Exception:
            return None

    def _module_option(self, name: str, values: list[str], invert: bool) -> None:
        value = (["!"] if invert else []) + values
        candidates = self._candidates()
        for ext in candidates:
            if name in _option_names(ext):
                ext.parse(name, value)
                return
        implicit = self._implicit_match()
        pool = candidates + ([implicit] if implicit is not None else [])
        owner: Any = None
        canonical = name
        if implicit is not None and name in _option_names(implicit):
            owner = implicit
        else:
            # getopt_long accepts an unambiguous abbreviation (Istio writes --to-port).
            hits = [(ext, opt) for ext in pool for opt in _option_names(ext) if opt.startswith(name)]
            distinct = {opt for _, opt in hits}
            if len(distinct) > 1:
                raise ConvertError(f"option --{name} is ambiguous: {', '.join(sorted(distinct))}")
            if hits:
                owner, canonical = hits[0]
        if owner is None:
            loaded = ", ".join(e.name for e in pool) or "none"
            raise ConvertError(f"unknown option --{name} (loaded extensions: {loaded})")
        if owner is implicit:
            self.rule.add_match(implicit)
            self.matches.append(implicit)
            self.implicit_loaded = True
        owner.parse(canonical, value)


def convert(iptc: Any, family: int, table: Any, rule_cls: Any, params: Sequence[str]) -> Any:
    return Converter(iptc, family, table, rule_cls, params).convert()
