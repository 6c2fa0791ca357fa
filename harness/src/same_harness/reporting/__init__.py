"""Reports for people: markdown tables shared by every report writer and the cost block
(``same_harness.docs`` renders ``docs/results.md`` from the JSON reports)."""
