"""prometheus-adapter rules for the two HPA metrics, and the ConfigMap that carries them."""

from __future__ import annotations

from .settings import (
    DeploySettings,
)
from .shapes import (
    ADAPTER_RULES,
    GATEWAY_RATE_METRIC,
    TRITON_QUEUE_METRIC,
    _meta,
)


def adapter_rules() -> str:
    """prometheus-adapter rules for the two HPA metrics (merge into the adapter's config).

    Triton's queue time is cumulative microseconds; divided by requests over the same window
    it is the mean wait per request of the ``reconstructor``, the ensemble's costliest step.
    """
    labels = (
        "resources:\n    overrides:\n      namespace: {resource: namespace}\n"
        "      pod: {resource: pod}\n"
    )
    queue = (
        'sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>,model="reconstructor"}[1m]))'
        " by (<<.GroupBy>>) / clamp_min(sum(rate(nv_inference_request_success"
        '{<<.LabelMatchers>>,model="reconstructor"}[1m])) by (<<.GroupBy>>), 1)'
    )
    rate = "sum(rate(same_gateway_requests_total{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
    return (
        "rules:\n"
        '- seriesQuery: \'nv_inference_queue_duration_us{namespace!="",pod!=""}\'\n'
        f"  {labels}"
        f'  name: {{matches: "^nv_inference_queue_duration_us$", as: "{TRITON_QUEUE_METRIC}"}}\n'
        f"  metricsQuery: '{queue}'\n"
        '- seriesQuery: \'same_gateway_requests_total{namespace!="",pod!=""}\'\n'
        f"  {labels}"
        f'  name: {{matches: "^same_gateway_requests_total$", as: "{GATEWAY_RATE_METRIC}"}}\n'
        f"  metricsQuery: '{rate}'\n"
    )


def adapter_config_map(s: DeploySettings) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ADAPTER_RULES, s),
        "data": {"rules.yaml": adapter_rules()},
    }
