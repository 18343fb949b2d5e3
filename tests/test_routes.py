"""kernel/routes.py's loop over the route steps, without the kernel: apply_routes and
remove_routes share it, so each must still record a step the moment it changed (the
rollback reads that list after a failure) and name the failing step its own way."""

import errno

import pytest

from istio_iptables.kernel import routes
from istio_iptables.model.iptables_plan import RouteStep

RULE = RouteStep("rule", 4, 133, 1337)
ROUTE = RouteStep("route", 4, 133)


def _refuse_route(step: RouteStep, _lo_index: int) -> bool:
    if step.kind == "route":
        raise OSError(errno.EPERM, "Operation not permitted")
    return True


def test_apply_keeps_what_landed_before_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "_add", _refuse_route)
    added: list[RouteStep] = []
    with pytest.raises(routes.RouteError) as caught:
        routes.apply_routes([RULE, ROUTE], added)
    assert added == [RULE]
    assert str(caught.value) == f"{ROUTE.describe()} failed: Operation not permitted"


def test_remove_names_the_step_it_was_removing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "_remove", _refuse_route)
    with pytest.raises(routes.RouteError) as caught:
        routes.remove_routes([RULE, ROUTE])
    assert str(caught.value) == f"removing ({ROUTE.describe()}) failed: Operation not permitted"


def test_remove_returns_only_the_steps_that_were_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "_remove", lambda step, _lo: step.kind == "rule")
    assert routes.remove_routes([RULE, ROUTE]) == [RULE]
