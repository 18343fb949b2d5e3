"""apply_rules and delete_rules: what the iptables mode calls, each in a worker process.

apply_rules is all or nothing: every rule is converted and inserted into in-memory
libiptc handles first, and only then is each touched table committed; a table the
kernel refuses at commit time reverts the tables committed before it.
delete_rules is best-effort and idempotent: it removes what is there and reports the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from istio_iptables.kernel.libiptc.common import FAMILY_NAMES, LibiptcError, RuleLike, lib_message, log, rule_text
from istio_iptables.kernel.libiptc.worker import dispatch

if TYPE_CHECKING:
    from istio_iptables.kernel.libiptc.tables import Tables

# convert, loader and tables are imported by the worker only (in _apply_here and _delete_here).

# Upper bound on deleting the same rule again when it was added more than once.
_MAX_DUPLICATE_DELETES = 64


class _TableWork:
    """What apply_rules did to one table, so a later commit failure can be undone."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.flushed: list[str] = []
        self.added: list[tuple[str, Any]] = []


def apply_rules(family: int, chains: Sequence[tuple[str, str]], rules: Sequence[RuleLike], *,
                isolate: bool = True) -> None:
    """Create ``chains`` and add ``rules`` in order, all or nothing.

    ``chains`` are (table, chain) pairs.  A missing chain is created; an existing user
    chain is flushed, as ``iptables-restore --noflush`` does with a declared chain;
    built-in chains are left alone.  Rules are then appended (``position is None``)
    or inserted at the 1-based ``position``.

    Every table is committed only after every rule converted and went into its
    in-memory handle.  On any failure the handles are discarded and
    :class:`LibiptcError` names the table, chain, rule and the library's message.
    If the kernel rejects a table at commit time, tables committed before it are
    reverted (rules deleted, created chains removed) before the error is raised.

    ``isolate``: see :mod:`.worker`.
    """
    dispatch(family, isolate, _apply_here, family, list(chains), list(rules))


def _apply_here(family: int, chains: Sequence[tuple[str, str]], rules: Sequence[RuleLike]) -> None:
    from istio_iptables.kernel.libiptc.convert import ConvertError, convert
    from istio_iptables.kernel.libiptc.loader import load_iptc
    from istio_iptables.kernel.libiptc.tables import Tables, xtables_lock

    iptc = load_iptc(family)
    fam = FAMILY_NAMES[family]
    with xtables_lock():
        tables = Tables(iptc, family)
        work: dict[str, _TableWork] = {}
        try:
            for table_name, chain_name in chains:
                table = tables.get(table_name)
                done = work.setdefault(table_name, _TableWork())
                try:
                    if table.builtin_chain(chain_name):
                        continue
                    if table.is_chain(chain_name):
                        table.flush_entries(chain_name)
                        done.flushed.append(chain_name)
                    else:
                        table.create_chain(chain_name)
                        done.created.append(chain_name)
                except Exception as exc:
                    raise LibiptcError(
                        f"{fam} -t {table_name}: cannot create chain {chain_name}: {lib_message(exc)}; "
                        "nothing was written",
                        table=table_name, chain=chain_name,
                    ) from exc
            # The chain set no longer changes: one lookup per chain, not per rule.
            chain_objects: dict[tuple[str, str], Any] = {}
            for planned in rules:
                table = tables.get(planned.table)
                done = work.setdefault(planned.table, _TableWork())
                try:
                    chain = chain_objects.get((planned.table, planned.chain))
                    if chain is None:
                        if not table.is_chain(planned.chain):
                            raise ConvertError(f"chain {planned.chain} does not exist")
                        chain = chain_objects[planned.table, planned.chain] = iptc.Chain(table, planned.chain)
                    if planned.position is not None and planned.position < 1:
                        raise ConvertError(f"position must be 1 or more, not {planned.position}")
                    rule = convert(iptc, family, table, tables.rule_cls, planned.params)
                    if planned.position is None:
                        chain.append_rule(rule)
                    else:
                        chain.insert_rule(rule, planned.position - 1)  # libiptc counts from 0
                    done.added.append((planned.chain, rule))
                except Exception as exc:
                    text = rule_text(planned)  # only on failure: it is per-rule work otherwise
                    raise LibiptcError(
                        f"{fam} -t {planned.table}: rule `{text}` failed: {lib_message(exc)}; nothing was written",
                        table=planned.table, chain=planned.chain, rule=text,
                    ) from exc
        except BaseException:
            tables.discard()
            raise
        _commit_all(tables, work)


def _commit_all(tables: Tables, work: dict[str, _TableWork]) -> None:
    fam = FAMILY_NAMES[tables.family]
    committed: list[str] = []
    for name, handle in tables.handles.items():
        try:
            handle.commit()
        except Exception as exc:
            notes = [_undo(tables, done_name, work.get(done_name, _TableWork())) for done_name in reversed(committed)]
            tables.discard()
            detail = f"; reverted already committed tables: {'; '.join(notes)}" if notes else "; nothing was written"
            count = len(work.get(name, _TableWork()).added)
            raise LibiptcError(
                f"{fam} -t {name}: commit rejected by the kernel ({count} rules added to the table; the kernel "
                f"log may name the refused extension): {lib_message(exc)}{detail}",
                table=name,
            ) from exc
        committed.append(name)
    tables.discard()  # fresh handles; a committed handle must not be committed again


def _undo(tables: Tables, name: str, done: _TableWork) -> str:
    """Best-effort revert of a table committed by apply_rules; returns a note."""
    iptc = tables.iptc
    handle = tables.handles[name]
    problems: list[str] = []
    try:
        handle.refresh()
        for chain_name, rule in reversed(done.added):
            try:
                iptc.Chain(handle, chain_name).delete_rule(rule)
            except Exception as exc:
                problems.append(f"rule in {chain_name}: {lib_message(exc)}")
        for chain_name in done.created:
            try:
                handle.flush_entries(chain_name)
            except Exception as exc:
                problems.append(f"flush {chain_name}: {lib_message(exc)}")
        for chain_name in done.created:
            try:
                handle.delete_chain(chain_name)
            except Exception as exc:
                problems.append(f"delete {chain_name}: {lib_message(exc)}")
        handle.commit()
    except Exception as exc:
        problems.append(str(exc))
    if done.flushed:
        problems.append(f"flushed chains not restored: {', '.join(done.flushed)}")
    return f"{name} ({'; '.join(problems)})" if problems else name


def delete_rules(family: int, rules: Sequence[RuleLike], chains: Sequence[tuple[str, str]], *,
                 isolate: bool = True) -> None:
    """Best-effort, idempotent cleanup of what :func:`apply_rules` wrote.

    Each rule is deleted (every copy of it) where present; then the given user chains
    are flushed and deleted where present.  Absent rules and chains are not errors.
    Everything that can be removed is committed; anything else that failed (a chain
    still referenced from a rule not listed, say) is reported afterwards in one
    :class:`LibiptcError`.  ``isolate``: see :mod:`.worker`.
    """
    dispatch(family, isolate, _delete_here, family, list(rules), list(chains))


def _delete_here(family: int, rules: Sequence[RuleLike], chains: Sequence[tuple[str, str]]) -> None:
    from istio_iptables.kernel.libiptc.convert import ConvertError, convert
    from istio_iptables.kernel.libiptc.loader import load_iptc
    from istio_iptables.kernel.libiptc.tables import Tables, xtables_lock

    iptc = load_iptc(family)
    fam = FAMILY_NAMES[family]
    problems: list[str] = []
    with xtables_lock():
        tables = Tables(iptc, family)
        unavailable: set[str] = set()

        def table_or_none(name: str) -> Any:
            if name in unavailable:
                return None
            try:
                return tables.get(name)
            except LibiptcError as exc:  # a table that cannot be opened holds nothing of ours
                log().debug("cleanup skips %s: %s", name, exc)
                unavailable.add(name)
                return None

        try:
            for planned in rules:
                table = table_or_none(planned.table)
                if table is None or not table.is_chain(planned.chain):
                    continue
                try:
                    rule = convert(iptc, family, table, tables.rule_cls, planned.params)
                except ConvertError as exc:
                    if not exc.missing_chain:
                        problems.append(f"-t {planned.table} `{rule_text(planned)}`: {lib_message(exc)}")
                    continue  # a jump to a chain that is gone: the rule cannot exist
                except Exception as exc:
                    problems.append(f"-t {planned.table} `{rule_text(planned)}`: {lib_message(exc)}")
                    continue
                chain = iptc.Chain(table, planned.chain)
                for _ in range(_MAX_DUPLICATE_DELETES):
                    try:
                        chain.delete_rule(rule)
                    except iptc.IPTCError:
                        break  # not (or no longer) present
                    except Exception as exc:
                        problems.append(f"-t {planned.table} `{rule_text(planned)}`: {lib_message(exc)}")
                        break
            user_chains = []
            for table_name, chain_name in chains:
                table = table_or_none(table_name)
                if table is None or not table.is_chain(chain_name) or table.builtin_chain(chain_name):
                    continue
                try:
                    table.flush_entries(chain_name)
                    user_chains.append((table, table_name, chain_name))
                except iptc.IPTCError as exc:
                    problems.append(f"-t {table_name} -F {chain_name}: {lib_message(exc)}")
            for table, table_name, chain_name in user_chains:
                try:
                    table.delete_chain(chain_name)
                except iptc.IPTCError as exc:
                    problems.append(f"-t {table_name} -X {chain_name}: {lib_message(exc)}")
            for name, handle in tables.handles.items():
                try:
                    handle.commit()
                except Exception as exc:
                    problems.append(f"-t {name}: commit failed: {lib_message(exc)}")
        finally:
            tables.discard()
    if problems:
        raise LibiptcError(f"{fam}: cleanup incomplete: " + " | ".join(problems))
