"""Reports for people: markdown tables shared by every report writer, and the generator of
``docs/results.md`` from the JSON reports the make targets write."""
