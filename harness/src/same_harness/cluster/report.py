"""The verdict of ``make cluster``: the named checks of its report and the one-line headline."""

from __future__ import annotations

from .checks import outage_holds


def checks(report: dict) -> dict[str, bool]:
    cluster, faults = report["cluster"], report["faults"]
    return {
        "no_failures_single": (report["single"]["locust"]["all"] or {}).get("failures") == 0,
        "no_failures_cluster": (cluster["locust"]["all"] or {}).get("failures") == 0,
        "both_workers_connected": cluster["workers_connected"] == report["settings"]["workers"],
        "both_gateways_served": all(n > 0 for n in cluster["requests_per_gateway"]),
        "both_tritons_served": all(n > 0 for n in cluster["requests_per_triton"]),
        "cross_path": report["cross_path"]["passed"],
        # Clients that retry (SameClient) lose nothing; Locust's users do not retry, so a call
        # in flight inside a killed process fails: at most one per user and kill.
        "no_honest_request_lost_with_client_retries": (
            faults["faults"]["honest_clients_with_retries"]["failed"] == 0
            and faults["faults"]["honest_clients_with_retries"]["calls"] > 0
        ),
        "locust_failures_only_calls_in_flight_at_kills": (faults["locust"]["all"] or {}).get(
            "failures", 0
        )
        <= 2 * report["settings"]["users"],
        "killed_processes_rejoined": all(faults["rejoined"].values()),
        "account_state_survived_faults": faults["thief_still_suspected"],
        "redis_outage_fail_closed": outage_holds(report["redis_outage"]["closed"]),
        "redis_outage_fail_open": outage_holds(report["redis_outage"]["open"]),
        "account_state_survived_outage": report["redis_outage"]["thief_suspected_after"],
    }


def headline(report: dict) -> str:
    s, c = report["single"]["locust"], report["cluster"]["locust"]
    p50 = [(x.get("benign") or {}).get("p50_ms") for x in (c, s)]
    failed = [k for k, ok in report["checks"].items() if not ok]
    return (
        f"== cluster: {c['images_per_s']} images/s vs single {s['images_per_s']} "
        f"(benign p50 {p50[0]} vs {p50[1]} ms); "
        f"faults: {report['faults']['locust']['all']['failures']} failed requests, benign "
        f"{(report['faults']['locust'].get('benign') or {}).get('failures')}; "
        + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    )
