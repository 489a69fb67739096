"""Composition root of the router: the fleet view, the strategies and the route operation, wired to the bus."""

from __future__ import annotations

from contracts.envelope import Envelope
from contracts.provisioner import ProvisionCommand
from contracts.router import BackendChecked, LlmDegraded, LlmRecovered
from services.router import handlers, metrics
from services.router.fallbacks import Fallbacks
from services.router.fallbacks import register as register_fallbacks
from services.router.fleet import Fleet, HealthRules
from services.router.health import RoleStates
from services.router.monitor import Checker, RoleWatch
from services.router.operations import Router
from services.router.provisioning import OnDemand
from services.router.settings import RouterSettings
from services.router.strategies import Latency, LeastBusy, Strategy, Weighted
from services.runtime.bus import publish_event
from services.runtime.parts import build_parts
from services.runtime.service import Service


def build_strategies(settings: RouterSettings) -> tuple[dict[str, Strategy], Strategy]:
    """Each strategy once, by name; then the one of each role named in the settings, and the default."""
    ttl = settings.in_flight_ttl_s
    by_name: dict[str, Strategy] = {
        "least_busy": LeastBusy(ttl),
        "latency": Latency(settings.latency_tolerance, settings.latency_tolerance_ms, ttl),
        "weighted": Weighted(dict(settings.weights), ttl),
    }
    per_role = {role: by_name[name] for role, name in settings.strategies.items()}
    return per_role, by_name[settings.default_strategy]


def build_fleet(settings: RouterSettings) -> Fleet:
    fleet = Fleet(
        HealthRules(
            allowed_fails=settings.allowed_fails, cooldown_s=settings.cooldown_s, window_s=settings.failure_window_s,
            ewma_alpha=settings.ewma_alpha, in_flight_ttl_s=settings.in_flight_ttl_s,
            missed_beats=settings.missed_beats, max_in_flight=settings.max_in_flight,
            limits={k.rstrip("/"): v for k, v in settings.max_in_flight_by_backend.items()},
        )
    )  # fmt: skip
    fleet.on_circuit = metrics.circuit_changed
    return fleet


def build_app(settings: RouterSettings) -> Service:
    return build_replica(settings)[0]


def build_replica(settings: RouterSettings, *, own_metrics: bool = True) -> tuple[Service, Router]:
    """The router service, and its route operation for a process that hosts the replica and routes through it
    directly (`services.gateway_router`; `own_metrics=False`: it records on that process's `/metrics`)."""
    parts = build_parts("router", settings, own_metrics=own_metrics)
    fleet = build_fleet(settings)
    per_role, default = build_strategies(settings)
    broker = parts.broker

    async def publish(command: Envelope) -> None:
        await publish_event(broker, command)

    on_demand = OnDemand(fleet, parts.rpc, publish, settings)
    fallbacks = Fallbacks()
    router = Router(fleet, parts.rpc, settings, per_role, default, on_demand=on_demand, fallbacks=fallbacks)
    watch = RoleWatch(fleet, parts.rpc, parts.broker, settings, RoleStates())
    checker = Checker(fleet, parts.broker, settings)
    metrics.watch(fleet, watch)
    handlers.register(parts.rpc, parts.streams, fleet, router, watch, settings.replay_s, on_demand,
                      settings.route_concurrency)  # fmt: skip
    register_fallbacks(parts.streams, fallbacks)
    service = parts.service(
        tasks=[checker.run, watch.run], publishes=[BackendChecked, LlmDegraded, LlmRecovered, ProvisionCommand]
    )
    return service, router
