"""The mypy baseline check: a budget per module that covers its submodules once it is split, no budget for
new modules, never more errors than the baseline."""

import importlib.util
from collections import Counter
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mypy_baseline", Path(__file__).with_name("mypy_baseline.py"))
mypy_baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mypy_baseline)
compare, module_of = mypy_baseline.compare, mypy_baseline.module_of


def test_a_split_module_keeps_its_budget_and_new_modules_have_none():
    budgets = {"train.data": 8, "pipeline.build": 2}
    split = Counter({"train.data.plan": 3, "train.data.loader": 5, "pipeline.build": 1})
    assert compare(split, budgets) == ([], {"train.data": 8, "pipeline.build": 1})
    grown = Counter({"train.data.plan": 9, "crawl.new": 1})
    problems, _ = compare(grown, budgets)
    assert problems == [
        "crawl.new: 1 mypy error(s) in a module without a baseline (budget 0)",
        "train.data: 9 mypy errors, the baseline allows 8",
    ]


def test_module_names_from_paths():
    assert module_of("train/data/__init__") == "train.data"
    assert module_of("pipeline/report/summary") == "pipeline.report.summary"
