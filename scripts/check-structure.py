#!/usr/bin/env python3
"""Checks the shape of src/: no circle of imports between files, and no file longer than the limit.

A file A depends on a file B when A names something of B through `crate::…` or `super::…` (in a `use`
or anywhere in the code); a parent module declaring its children is not a dependency, and unit tests
(`#[cfg(test)] mod tests`) may look anywhere. Circles are printed as the files in them, with what each
takes from the next, and make the script fail. Run it from the repository: `scripts/check-structure.py`.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LINE_LIMIT = 400
# Files allowed to be longer, each with the reason: tables that read best whole.
LONG_ON_PURPOSE = {
    "config.rs": "the table of every setting, with its parsers",
    "http/openapi.rs": "the table of every endpoint",
}


def module_of(path):
    rel = os.path.relpath(path, SRC)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def load():
    modules = {}
    for folder, _, names in os.walk(SRC):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as handle:
                    modules[module_of(path)] = (path, handle.read())
    return modules


def strip_tests_and_comments(text):
    text = re.sub(r"(?s)#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.replace(" ", "").replace("\n", "")
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{" and depth == 0:
            start = i
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "}" and depth == 0:
            prefix, inner = tree[:start], tree[start + 1 : i]
            parts, level, last = [], 0, 0
            for j, c in enumerate(inner + ","):
                level += c == "{"
                level -= c == "}"
                if c == "," and level == 0:
                    if inner[last:j]:
                        parts.append(inner[last:j])
                    last = j + 1
            return [p for part in parts for p in expand_use(prefix + part)]
    return [tree]


def dependencies(module, text, modules):
    """Modules this one uses, with the names it takes from each."""
    found = {}
    text = strip_tests_and_comments(text)
    paths = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        paths += expand_use(tree)
    paths += re.findall(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text)
    for path in paths:
        segments = path.split("::")
        if segments[0] == "crate":
            absolute = segments[1:]
        elif segments[0] == "super":
            base = list(module)
            while segments and segments[0] == "super":
                base = base[:-1]
                segments = segments[1:]
            absolute = base + segments
        else:
            continue
        for n in range(len(absolute), 0, -1):
            target = tuple(absolute[:n])
            if target in modules:
                break
        else:
            continue
        is_child = target[: len(module)] == module
        if target != module and not is_child:
            found.setdefault(target, set()).add(absolute[n] if n < len(absolute) else target[-1])
    return found


def circles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def main():
    modules = load()
    graph, names = {}, {}
    for module, (_, text) in modules.items():
        deps = dependencies(module, text, modules)
        graph[module] = set(deps)
        for target, taken in deps.items():
            names[(module, target)] = taken
    failed = False
    label = lambda m: "::".join(m) or "crate root"
    for component in circles(graph):
        failed = True
        print("import circle: " + ", ".join(label(m) for m in component))
        for a in component:
            for b in component:
                if b in graph[a]:
                    print(f"  {label(a)} -> {label(b)}: {', '.join(sorted(names[(a, b)]))}")
    for module, (path, text) in sorted(modules.items()):
        rel = os.path.relpath(path, SRC)
        lines = text.count("\n")
        if lines > LINE_LIMIT and rel not in LONG_ON_PURPOSE:
            failed = True
            print(f"too long: src/{rel} has {lines} lines (limit {LINE_LIMIT})")
    if failed:
        sys.exit(1)
    print(f"structure: {len(modules)} files, no import circle, none over {LINE_LIMIT} lines but the tables")


if __name__ == "__main__":
    main()
