"""Control flow in the loop model: the flow graph, which operations may follow which in one
iteration, and that ordering across files."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from tests.helpers import check_tree, found, only_training_loop, write_tree
from trainaudit.model.loops.cfg import FlowGraph


def _graph(source: str) -> tuple[FlowGraph, dict[str, ast.stmt]]:
    """The graph of a body, and its statements by their source text."""
    tree = ast.parse(textwrap.dedent(source))
    statements = {ast.unparse(n).splitlines()[0]: n for n in ast.walk(tree) if isinstance(n, ast.stmt)}
    return FlowGraph.of(tree.body), statements



def test_if_arms_exclude_each_other() -> None:
    graph, s = _graph("""\
        if bad:
            a()
        else:
            b()
        c()
    """)
    assert not graph.reaches(s["a()"], s["b()"])
    assert graph.reaches(s["a()"], s["c()"]) and graph.reaches(s["b()"], s["c()"])


def test_continue_break_return_and_loop_header() -> None:
    graph, s = _graph("""\
        for x in xs:
            a()
            if bad:
                b()
                continue
            if done:
                d()
                break
            c()
        e()
    """)
    loop = s["for x in xs:"]
    assert not graph.reaches(s["b()"], s["c()"], avoid=loop)
    assert graph.reaches(s["b()"], s["c()"])  # in the next iteration
    assert not graph.reaches(s["d()"], s["c()"]) and graph.reaches(s["d()"], s["e()"])
    assert graph.reaches(s["a()"], s["c()"], avoid=loop)


def test_return_raise_try_and_endlessonly_training_loop() -> None:
    graph, s = _graph("""\
        try:
            a()
            if bad:
                raise ValueError()
            b()
        except ValueError:
            h()
        if skip:
            r()
            return None
        c()
        while True:
            w()
    """)
    assert graph.reaches(s["a()"], s["h()"]) and graph.reaches(s["raise ValueError()"], s["h()"])
    assert not graph.reaches(s["r()"], s["c()"])
    assert graph.returns(s["r()"]) and not graph.returns(s["c()"])  # the while True never ends


def test_may_follow_in_one_iteration() -> None:
    loop = only_training_loop("""\
        def train(model, loader, optimizer):
            for x in loader:
                model(x).sum().backward()
                if bad(x):
                    optimizer.zero_grad()
                    continue
                optimizer.step()
                optimizer.zero_grad()
    """)
    backward, = loop.ops("backward")
    skip, clear = loop.ops("zero_grad")
    step, = loop.ops("optimizer_step")
    assert loop.may_follow(backward, skip) and loop.may_follow(backward, step)
    assert not loop.may_follow(skip, step) and not loop.may_follow(clear, step)
    assert loop.may_follow(step, clear)


def test_helper_return_orders_its_events() -> None:
    loop = only_training_loop("""\
        def update(model, optimizer, loss):
            loss.backward()
            if not ok(model):
                optimizer.zero_grad()
                return False
            optimizer.step()
            return True

        def train(model, loader, optimizer):
            for x in loader:
                update(model, optimizer, model(x).sum())
    """)
    skip, = loop.ops("zero_grad")
    step, = loop.ops("optimizer_step")
    assert not loop.may_follow(skip, step) and loop.may_follow(loop.ops("backward")[0], step)


_HELPER = """\
    def update(model, optimizer, loss):
        loss.backward()
        if not ok(model):
            optimizer.zero_grad()
            {exit}
        optimizer.step()
        optimizer.zero_grad()
"""
_TRAINER = """\
    from steps import update


    def train(model, loader, optimizer):
        for x in loader:
            update(model, optimizer, model(x).sum())
"""


def test_ordering_crosses_files(tmp_path: Path) -> None:
    write_tree(tmp_path, {"steps.py": textwrap.dedent(_HELPER.format(exit="return")),
                          "train.py": textwrap.dedent(_TRAINER)})
    assert found(check_tree(tmp_path, select=("TA206",))) == set()
    write_tree(tmp_path, {"steps.py": textwrap.dedent(_HELPER.format(exit="pass"))})
    assert found(check_tree(tmp_path, select=("TA206",))) == {("steps.py", 4, 9, "TA206")}
