"""Parse iptables rule text (restore input or `-save` output) into rules with typed
matches, so `explain` can walk them as netfilter would.

One parser serves both sources: the plan rendered as restore text (no kernel) and
the namespace's real `iptables-save` output (`--live`).  What it does not understand
is kept, not dropped: an option of an unknown match module becomes an `unknown`
match, which the evaluator reports as uncertain instead of guessing.

Pure: no I/O.
"""


import shlex

from istio_iptables.model.record import Record

BUILTIN_POLICY_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
# Options that take one value, by the module that owns them ("" = iptables itself).
_CORE_VALUE_OPTS = {
    "-p": "proto", "--protocol": "proto", "-s": "src", "--source": "src", "--src": "src",
    "-d": "dst", "--destination": "dst", "--dst": "dst", "-i": "iif", "--in-interface": "iif",
    "-o": "oif", "--out-interface": "oif",
}
_PORT_OPTS = {"--dport": "dport", "--destination-port": "dport", "--sport": "sport", "--source-port": "sport",
              "--dports": "dports", "--destination-ports": "dports", "--sports": "sports",
              "--source-ports": "sports", "--ports": "ports"}
_MODULE_VALUE_OPTS = {
    "owner": {"--uid-owner": "uid", "--gid-owner": "gid"},
    "mark": {"--mark": "mark"},
    "connmark": {"--mark": "connmark"},
    "conntrack": {"--ctstate": "ctstate"},
    "state": {"--state": "ctstate"},
    "comment": {"--comment": "comment"},
}
# Modules whose options are flags (no value) and whose result depends on state the
# model does not have; kept as `unknown`.
_MODULE_FLAG_OPTS = {"socket": ("--transparent", "--nowildcard", "--restore-skmark"),
                     "owner": ("--socket-exists", "--suppl-groups")}


class RuleSyntaxError(ValueError):
    """Rule text the parser cannot read at all (not merely an unknown match)."""


class Match(Record):
    """One test of a rule: `kind` (proto, src, dst, iif, oif, dport, sport, dports,
    sports, ports, uid, gid, mark, connmark, ctstate, comment, unknown), its value as
    written, and whether it was negated with `!`."""

    kind: str
    value: str
    negated: bool = False
    module: str = ""

    def text(self) -> str:
        return ("! " if self.negated else "") + f"{self.kind} {self.value}"


class ParsedRule(Record):
    """One rule: its matches, its target (a verdict, an extension, or a chain), the
    target's options, whether it is a goto, and the line as written."""

    matches: tuple[Match, ...]
    target: str | None
    target_opts: dict[str, str]
    goto: bool
    text: str


class Chain(Record):
    """A chain's policy (built-in chains only; '-' otherwise) and its rules in order."""

    policy: str
    rules: list[ParsedRule]


# family -> table -> chain name -> Chain
Tables = dict[str, dict[str, Chain]]


def parse_rule(chain: str, args: list[str], text: str) -> ParsedRule:
    """The arguments after `-A chain` into a ParsedRule."""
    matches: list[Match] = []
    target: str | None = None
    goto = False
    target_opts: dict[str, str] = {}
    module = ""
    negate = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "!":
            negate = True
            i += 1
            continue
        value = args[i + 1] if i + 1 < len(args) else ""
        if arg in ("-j", "--jump", "-g", "--goto"):
            target, goto = value, arg in ("-g", "--goto")
            i += 2
            # Everything after the target is the target's options.
            while i < len(args):
                opt = args[i]
                nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
                target_opts[opt] = nxt
                i += 2 if nxt else 1
            break
        if arg in ("-m", "--match"):
            module = value
            i += 2
            continue
        if arg in ("-c", "--set-counters"):
            i += 3
            continue
        if arg in _CORE_VALUE_OPTS:
            matches.append(Match(_CORE_VALUE_OPTS[arg], value, negate))
        elif arg in _PORT_OPTS:
            matches.append(Match(_PORT_OPTS[arg], value, negate, module))
        elif arg in _MODULE_VALUE_OPTS.get(module, {}):
            matches.append(Match(_MODULE_VALUE_OPTS[module][arg], value, negate, module))
        elif arg in _MODULE_FLAG_OPTS.get(module, ()) or (module == "socket" and arg.startswith("--")):
            matches.append(Match("unknown", f"-m {module} {arg}", negate, module))
            i += 1
            negate = False
            continue
        elif arg.startswith("-"):
            matches.append(Match("unknown", f"-m {module} {arg} {value}".strip() if module else f"{arg} {value}",
                                 negate, module))
        else:
            raise RuleSyntaxError(f"cannot read {arg!r} in rule {text!r}")
        negate = False
        i += 2
    # `-m socket` alone (no options) still needs a socket lookup.
    if "socket" in _modules(args) and not any(m.module == "socket" for m in matches):
        matches.append(Match("unknown", "-m socket", False, "socket"))
    return ParsedRule(tuple(matches), target, target_opts, goto, text)


def _modules(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-m", "--match")]


def parse_tables(text: str) -> Tables:
    """Restore input or `-save` output (one family) into tables of chains.

    Handles `*table`, `:CHAIN POLICY [counters]`, `-N`, `-A`, `-I chain [pos]`,
    `COMMIT` and comments, so the plan's restore text and iptables-save read the same.
    """
    tables: Tables = {}
    current: dict[str, Chain] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), {})
            continue
        if current is None:
            raise RuleSyntaxError(f"line {number}: {line!r} comes before any *table line")
        if line.startswith(":"):
            name, _, after = line[1:].partition(" ")
            policy = after.split()[0] if after.split() else "-"
            existing = current.get(name)
            current[name] = Chain(policy, existing.rules if existing else [])
            continue
        if line.startswith("["):  # `iptables-save -c`: [packets:bytes] before the rule
            line = line.partition("]")[2].strip()
        try:
            words = shlex.split(line)
        except ValueError as err:
            raise RuleSyntaxError(f"line {number}: {line!r}: {err}") from None
        verb = words[0]
        if verb == "-N" and len(words) == 2:
            current.setdefault(words[1], Chain("-", []))
            continue
        if verb not in ("-A", "-I") or len(words) < 2:
            raise RuleSyntaxError(f"line {number}: cannot read {line!r}")
        name = words[1]
        chain = current.setdefault(name, Chain("ACCEPT" if name in BUILTIN_POLICY_CHAINS else "-", []))
        rest = words[2:]
        position = None
        if verb == "-I":
            position = 1
            if rest and rest[0].isdigit():
                position, rest = int(rest[0]), rest[1:]
        rule = parse_rule(name, rest, f"-A {name} {' '.join(rest)}" if verb == "-I" else line)
        if position is None:
            chain.rules.append(rule)
        else:
            chain.rules.insert(position - 1, rule)
    for table in tables.values():
        for name in BUILTIN_POLICY_CHAINS:
            if name in table and table[name].policy == "-":
                table[name] = Chain("ACCEPT", table[name].rules)
    return tables
