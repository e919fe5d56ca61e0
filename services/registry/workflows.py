"""Save-time checks of workflow definitions: the step graph, conditions and templates.

Steps form a graph. After a step, its transition says what runs next: a goto,
or a switch of CEL cases and a default; without one, the next step in the
list (the end after the last). A saved workflow must be able to run:

- step ids are unique, and "end" (which ends the workflow) is no step's id;
- every goto, case and default names a step or "end";
- every step is reachable from the first, and from every step some path
  reaches the end;
- a step on a cycle has max_visits of 2 or more: loops are allowed, bounded;
- conditions are CEL that compiles and reads only `input`, `steps` and `vars`
  (plus the names its own macros bind, e.g. the `x` in `list.all(x, x > 0)`);
- input templates reference `{{ input }}`, `{{ vars.NAME... }}` or
  `{{ steps.ID.output... }}` of a step of this workflow. Any step may be named,
  itself included and those after it: with loops, which steps ran before is
  decided by the run, not by the list (one that has not run renders empty).

Whether the agents the steps run exist and are the caller's is checked in the
write's transaction (workflows_store.py), not here.

User text is matched by RE2 only, with fixed patterns.
"""

from __future__ import annotations

from collections.abc import Iterator

import cel
import re2

from agentmesh.errors import InvalidArgument, quoted
from agentmesh.gen.registry.v1 import registry_pb2, workflows_pb2
from agentmesh.names import ResourceName

AGENT = ResourceName.of(registry_pb2.Agent)
END = "end"
CEL_VARIABLES = frozenset({"input", "steps", "vars"})

Violation = tuple[str, str]

_TEMPLATE = re2.compile(r"\{\{(.*?)\}\}")
_REFERENCE = re2.compile(
    r"input|vars(?:\.[A-Za-z0-9_-]+)+|steps\.([a-z][a-z0-9_]{0,62})\.output(?:\.[A-Za-z0-9_-]+)*"
)
# The variable a comprehension macro binds: the first argument of .all(x, ...) and kin.
_MACRO_VARIABLE = re2.compile(
    r"\.\s*(?:all|exists_one|exists|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)


def workflow_agents(workflow: workflows_pb2.Workflow, field: str = "workflow") -> list[Violation]:
    """(field path, agent id) for every agent the workflow's steps run."""
    found = []
    for i, step in enumerate(workflow.steps):
        at = f"{field}.steps[{i}]"
        for path, agent_step in _agent_steps(step, at):
            found.append((f"{path}.agent", AGENT.id(agent_step.agent)))
    return found


def check_workflow_definition(workflow: workflows_pb2.Workflow, field: str = "workflow") -> None:
    """Raises InvalidArgument naming every problem in a definition buf.validate passed."""
    steps = list(workflow.steps)
    ids = [step.id for step in steps]
    violations: list[Violation] = []
    # The graph can only be judged once every step and every edge is known.
    graph_known = True
    for i, step in enumerate(steps):
        at = f"{field}.steps[{i}]"
        if step.id == END:
            violations.append((f"{at}.id", f'"{END}" is reserved: going to it ends the workflow'))
            graph_known = False
        elif step.id in ids[:i]:
            violations.append((f"{at}.id", f"another step has the id {step.id!r}"))
            graph_known = False
        for path, agent_step in _agent_steps(step, at):
            if problem := template_problem(agent_step.input, ids):
                violations.append((f"{path}.input", problem))
        if step.WhichOneof("kind") == "parallel":
            violations.extend(_parallel_problems(step.parallel, f"{at}.parallel"))
        for path, target in _transitions(steps, i, at):
            if target != END and target not in ids:
                violations.append((path, f'no step has the id {target!r} (nor is it "{END}")'))
                graph_known = False
        if step.next.WhichOneof("target") == "switch":
            for j, case in enumerate(step.next.switch.cases):
                if problem := condition_problem(case.condition):
                    violations.append((f"{at}.next.switch.cases[{j}].condition", problem))
    if graph_known:
        violations.extend(_graph_problems(steps, field))
    if violations:
        raise InvalidArgument(violations)


def condition_problem(condition: str) -> str | None:
    """Why a CEL condition cannot be used; None if it can."""
    try:
        program = cel.compile(condition)
    except ValueError as error:
        return f"not valid CEL: {_cel_error(str(error))}"
    bound = set(_MACRO_VARIABLE.findall(condition))
    unknown = sorted(set(program.variables()) - CEL_VARIABLES - bound)
    if unknown:
        return (
            f"{unknown[0]!r} is not a variable here; a condition reads only input, steps and vars"
        )
    return None


def template_problem(template: str, step_ids: list[str]) -> str | None:
    """Why an input template cannot be rendered; None if it can."""
    for expression in _TEMPLATE.findall(template):
        reference = expression.strip()
        found = _REFERENCE.fullmatch(reference)
        if found is None:
            return (
                f"{quoted(reference, 80)} is no reference; use {{{{ input }}}}, "
                "{{ vars.NAME }} or {{ steps.ID.output }}"
            )
        step_id = found.group(1)
        if step_id is not None and step_id not in step_ids:
            return f"no step has the id {step_id!r}"
    if "{{" in _TEMPLATE.sub("", template):
        return "a {{ is never closed with }}"
    return None


def _cel_error(message: str) -> str:
    # The library quotes the whole expression first; what follows "ERROR: " says
    # where and what, e.g. "<input>:1:4: Syntax error: mismatched input ...".
    detail = message.partition("ERROR: ")[2] or message
    return detail.splitlines()[0].removeprefix("<input>:")


def _agent_steps(
    step: workflows_pb2.WorkflowStep, at: str
) -> Iterator[tuple[str, workflows_pb2.AgentStep]]:
    if step.WhichOneof("kind") == "agent":
        yield f"{at}.agent", step.agent
    elif step.WhichOneof("kind") == "parallel":
        for k, branch in enumerate(step.parallel.branches):
            yield f"{at}.parallel.branches[{k}].agent", branch.agent


def _parallel_problems(parallel: workflows_pb2.ParallelStep, at: str) -> list[Violation]:
    problems = []
    seen: set[str] = set()
    for k, branch in enumerate(parallel.branches):
        if branch.id in seen:
            problems.append((f"{at}.branches[{k}].id", f"another branch has the id {branch.id!r}"))
        seen.add(branch.id)
    if parallel.wait_for > len(parallel.branches):
        problems.append(
            (f"{at}.wait_for", f"there are only {len(parallel.branches)} branches to wait for")
        )
    return problems


def _transitions(steps: list[workflows_pb2.WorkflowStep], i: int, at: str) -> list[tuple[str, str]]:
    """(field path, target) of every step (or "end") that may run after step i."""
    step = steps[i]
    which = step.next.WhichOneof("target")
    if which == "goto":
        return [(f"{at}.next.goto", step.next.goto)]
    if which == "switch":
        switch = step.next.switch
        cases = [
            (f"{at}.next.switch.cases[{j}].goto", case.goto) for j, case in enumerate(switch.cases)
        ]
        return [*cases, (f"{at}.next.switch.default", switch.default)]
    return [(f"{at}.next", steps[i + 1].id if i + 1 < len(steps) else END)]


def _graph_problems(steps: list[workflows_pb2.WorkflowStep], field: str) -> list[Violation]:
    index = {step.id: i for i, step in enumerate(steps)}
    successors = [{target for _, target in _transitions(steps, i, "")} for i in range(len(steps))]

    def reachable_from(start: int) -> set[str]:
        seen: set[str] = set()
        stack = list(successors[start])
        while stack:
            target = stack.pop()
            if target not in seen:
                seen.add(target)
                if target != END:
                    stack.extend(successors[index[target]])
        return seen

    reach = [reachable_from(i) for i in range(len(steps))]
    from_first = reach[0] | {steps[0].id}
    problems = []
    for i, step in enumerate(steps):
        at = f"{field}.steps[{i}]"
        if step.id not in from_first:
            problems.append((at, "no path from the first step leads to this step"))
            continue
        if END not in reach[i]:
            problems.append((f"{at}.next", "no path from this step reaches the end"))
        if step.id in reach[i] and step.max_visits < 2:
            problems.append(
                (
                    f"{at}.max_visits",
                    "the step is on a loop: bound how often it runs with max_visits of 2 or more",
                )
            )
    return problems
