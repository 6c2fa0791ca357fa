"""The dashboard's panels drawn from a Prometheus, without Grafana (docs/operations.md's figure).

    python -m same_defense.deploy.panels --prometheus http://127.0.0.1:9090 \\
        --minutes 5 --out docs/operations-dashboard.png

Every query is the dashboard's own (``deploy/monitoring/grafana-dashboard.json``), with
Grafana's ``$__rate_interval`` set to ``--rate-interval``; each panel becomes one subplot.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger("same.deploy.panels")
DASHBOARD = Path("deploy/monitoring/grafana-dashboard.json")


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """Prometheus' ``/api/v1/query_range``: one ``{"metric", "values"}`` per series."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        answer = json.loads(r.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer.get('error')}")
    return answer["data"]["result"]


def _legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def draw(board: dict, prometheus: str, start: float, end: float, rate: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = board["panels"]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 3.1 * rows), squeeze=False)
    step = max(1.0, (end - start) / 300)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate)
            for series in query_range(prometheus, expr, start, end, step):
                t = [(float(s) - start) / 60 for s, _ in series["values"]]
                v = [float(x) for _, x in series["values"]]
                ax.plot(t, v, label=_legend(target.get("legendFormat", ""), series["metric"]))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(panel["title"] + (f" ({unit})" if unit else ""), fontsize=9)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    p.add_argument("--minutes", type=float, default=10.0, help="the window, ending now")
    p.add_argument("--end", type=float, help="end of the window (epoch seconds; default: now)")
    p.add_argument("--rate-interval", default="30s", help="Grafana's $__rate_interval")
    p.add_argument("--out", type=Path, default=Path("docs/operations-dashboard.png"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    end = args.end or time.time()
    board = json.loads(args.dashboard.read_text())
    draw(board, args.prometheus, end - 60 * args.minutes, end, args.rate_interval, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
