"""The ground floor of interloom: what every other package stands on, and which imports none of them.

    record.py   the Document / Image record and its Arrow schemas
    format.py   a corpus on disk: shard writer, manifest, reader (`Corpus`)
    storage.py  local folders and object storage (fsspec), atomic writes
    stats.py    the `Ledger`: the funnel of counted ins, outs and drops
    steps.py    the step protocol: `Step`, `Filter`, `Drop`, `run_steps`, declared `Signal`s and `Resources`
    runner.py   one way to run units on Ray (tasks or actors), one failure policy
    config.py   config sections (pydantic), YAML files and `--set` overrides

crawl/, filters/ and train/ stand on it; pipeline/ (the build, demo, export, report, CLI) stands on top.
The import contracts in pyproject.toml keep it so.
"""
